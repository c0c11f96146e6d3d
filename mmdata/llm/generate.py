"""Grow a task's templates: ask the LLM for rephrasings of the accepted ones, add them as candidates.

Request `i` of a run uses seed `seed + i` (prompt examples and sampling), so a run is a fixed list of
requests: with the response cache a rerun sends nothing and adds the same candidates. Requests run
concurrently (a bounded pool of threads); a text that several requests of one run return is added
once, with the provenance of the lowest-numbered of them, so the file does not depend on the order
the responses arrived in, and the others are counted as `repeated`. Candidates are saved to the
template file every few responses and when the run stops for any reason (done, fatal error,
Ctrl-C), so nothing received is lost. Every new entry has status `candidate` and provenance; it is
used only once reviewed.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mmdata.core.tasks import TaskSpec
from mmdata.llm.client import LLMClient, LLMError, LLMResult, RequestFailed
from mmdata.llm.prompts import (
    GROUP_TOKEN,
    Sampling,
    expand_group,
    marker_list,
    parse_reply,
    prompt_hash,
    reply_was_cut,
    request_body,
)
from mmdata.llm.store import TemplateEntry, TemplateFile, template_id

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 4
SAVE_EVERY = 10


@dataclass
class GenerationReport:
    task: str
    route: str
    requested: int
    responses: int = 0
    cached: int = 0
    sent: int = 0
    added: list[str] = field(default_factory=list)
    already_present: int = 0
    # ids of the entries behind `already_present` that are still candidates (an interrupted
    # run's, say): the caller validates them with `added`
    present_candidates: list[str] = field(default_factory=list)
    repeated: int = 0
    empty: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    elapsed_s: float = 0.0
    interrupted: bool = False
    retries: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [
            f"{self.task} [{self.route}]: {self.responses}/{self.requested} responses "
            f"({self.cached} cached, {self.sent} requests sent) in {self.elapsed_s:.1f} s",
            f"{len(self.added)} new candidates",
        ]
        if self.already_present:
            parts.append(f"{self.already_present} already in the file")
        if self.repeated:
            parts.append(f"{self.repeated} repeated a reply of this run")
        if self.empty:
            parts.append(f"{self.empty} empty replies")
        if self.failed:
            parts.append(f"{len(self.failed)} failed requests")
        if self.retries:
            parts.append("retries: " + ", ".join(f"{k}={v}" for k, v in self.retries.items()))
        if self.interrupted:
            parts.append("INTERRUPTED (rerun the same command to resume from the cache)")
        return "; ".join(parts)


def _sampling_record(sampling: Sampling, body: dict, spec: TaskSpec) -> dict:
    """The sampling part of a candidate's provenance (options that were off are left out)."""
    rec = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": body["seed"],
        "n_shots": sampling.n_shots,
        "shuffle_every": sampling.shuffle_every,
    }
    if "stop" in body:
        rec["stop"] = body["stop"]
    if sampling.grammar:
        rec["grammar"] = sampling.grammar
        rec["grammar_field"] = sampling.grammar_field
        if sampling.grammar_max_text is not None:
            rec["grammar_max_text"] = sampling.grammar_max_text
    if sampling.group_markers:
        rec["group_markers"] = {GROUP_TOKEN: marker_list(spec)}
    return rec


def _examples(tf: TemplateFile) -> list[str]:
    examples = [t.text for t in tf.with_status("accepted")]
    if not examples:
        raise ValueError(
            f"{tf.path}: no accepted templates to start from; write a few seed templates first"
        )
    return examples


def generate(
    tf: TemplateFile,
    spec: TaskSpec,
    client: LLMClient,
    n: int,
    *,
    seed: int = 0,
    sampling: Sampling | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    save: Callable[[TemplateFile], object] | None = None,
    save_every: int = SAVE_EVERY,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationReport:
    """Send `n` requests for rephrasings and add the new ones to `tf` as candidates.

    Raises the first fatal LLMError (unreachable endpoint, unknown model, refused key) and
    KeyboardInterrupt, after saving what was received; requests still in flight then are not waited
    for (their threads are daemons, so Ctrl-C ends the command at once). A request that fails for
    good is counted in `report.failed` and the run goes on. Every response is accounted for:
    `responses == len(added) + already_present + repeated + empty`.
    """
    sampling = sampling or Sampling()
    route = client.config.route
    examples = _examples(tf)
    base = list(tf.templates)
    existing = {t.id for t in base}
    candidates = {t.id for t in base if t.status == "candidate"}
    report = GenerationReport(task=spec.name, route=route, requested=n)
    replies: dict[int, TemplateEntry] = {}  # request index -> its new (not yet in the file) text
    sent_before = client.requests_sent
    start = time.monotonic()

    def body_for(i: int) -> dict:
        return request_body(route, spec, examples, sampling, seed + i)

    def job(i: int) -> tuple[dict, LLMResult | RequestFailed]:
        body = body_for(i)
        try:
            return body, client.request(body)
        except RequestFailed as e:
            return body, e

    def new_entries() -> list[TemplateEntry]:
        """One entry per new text, from the lowest request index that returned it."""
        out: dict[str, TemplateEntry] = {}
        for i in sorted(replies):
            out.setdefault(replies[i].id, replies[i])
        return list(out.values())

    def flush() -> None:
        tf.templates = base + new_entries()
        if save is not None:
            save(tf)

    def take(i: int, body: dict, res: LLMResult) -> None:
        report.responses += 1
        report.cached += int(res.cached)
        text = reply = parse_reply(route, res.text)
        if text and sampling.group_markers:
            text = expand_group(spec, text)
        if not text:
            report.empty += 1
            return
        tid = template_id(spec.name, text)
        if tid in existing:
            report.already_present += 1
            if tid in candidates and tid not in report.present_candidates:
                report.present_candidates.append(tid)
            return
        replies[i] = TemplateEntry(
            id=tid,
            text=text,
            status="candidate",
            source="llm",
            provenance={
                "model": client.config.model,
                "endpoint_kind": route,
                "endpoint": client.config.kind,
                "prompt_sha256": prompt_hash(body),
                "request_sha256": res.key,
                "sampling": _sampling_record(sampling, body, spec),
                **({"model_text": reply} if sampling.group_markers else {}),
                # stopped by max_tokens inside the line: validation rejects it (`truncated`)
                **(
                    {"truncated": True} if reply_was_cut(route, res.text, res.finish_reason) else {}
                ),
                "date": dt.date.today().isoformat(),
            },
        )

    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(n):
        todo.put(i)
    results: queue.SimpleQueue[tuple[int, object]] = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results.put((i, job(i)))
            except BaseException as e:  # a fatal LLMError (or a bug): the main thread re-raises it
                results.put((i, e))

    # Daemon threads: a run stopped by Ctrl-C or a fatal error exits without waiting out the
    # requests in flight (a ThreadPoolExecutor's threads are joined at exit: up to
    # timeout x retries).
    threads = [
        threading.Thread(target=worker, name=f"llm-{k}", daemon=True)
        for k in range(max(1, min(concurrency, n)))
    ]
    since_save = 0
    try:
        for t in threads:
            t.start()
        for _ in range(n):
            i, out = results.get()
            if isinstance(out, BaseException):
                raise out
            body, res = out
            if isinstance(res, RequestFailed):
                report.failed[i] = str(res)
                log.warning("request %d failed: %s", i, res)
            else:
                take(i, body, res)
            since_save += 1
            if progress is not None:
                progress(report.responses + len(report.failed), n)
            if since_save >= save_every:
                flush()
                since_save = 0
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    except LLMError:
        raise
    finally:
        stop.set()
        flush()
        entries = new_entries()
        report.added = [e.id for e in entries]
        report.repeated = len(replies) - len(entries)
        report.elapsed_s = time.monotonic() - start
        report.sent = client.requests_sent - sent_before
        report.retries = dict(client.retries)
    return report
