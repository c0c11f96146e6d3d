"""Human review of candidate templates: interactive in a terminal, or from a decisions file.

Only a candidate that passes validation (rules and near-duplicate checks, run first) can be
accepted; a decision to accept anything else is refused and reported. A template rejected by a
reviewer (not by validation) can be accepted by a later decision: it is validated again, against
the accepted set, first. Decisions are bound to the
text they were made on: if a template's text differs from the decision's, the decision is refused.

Decisions file (`templates/reviews/<task>.yaml`):

    task: edge2img
    reviewer: jane
    decisions:
      - {id: edge2img-llm-0123456789, decision: accept, text: "..."}
      - {id: edge2img-llm-abcdef0123, decision: reject, text: "...", note: "drops the edge map"}
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from mmdata.core.tasks import TaskSpec
from mmdata.llm.store import TemplateEntry, TemplateFile, atomic_write_text, templates_dir
from mmdata.llm.validate import (
    DEFAULT_SIMILARITY_THRESHOLD,
    Embedder,
    ValidationReport,
    check_template,
    validate_file,
)

DECISIONS = ("accept", "reject")


@dataclass
class ReviewReport:
    task: str
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    validation: ValidationReport | None = None

    def summary(self) -> str:
        s = f"{self.task}: {len(self.accepted)} accepted, {len(self.rejected)} rejected by review"
        if self.unchanged:
            s += f", {len(self.unchanged)} already decided"
        if self.refused:
            s += f", {len(self.refused)} decisions refused"
        return s


def decisions_path(task: str, directory: str | Path | None = None) -> Path:
    return templates_dir(directory) / "reviews" / f"{task}.yaml"


def load_decisions(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("decisions"), list):
        raise ValueError(f"{path}: a decisions file needs a 'decisions' list")
    for d in data["decisions"]:
        if not isinstance(d, dict) or "id" not in d or d.get("decision") not in DECISIONS:
            raise ValueError(f"{path}: each decision needs an id and decision: accept|reject: {d}")
    return data


def save_decisions(path: str | Path, task: str, reviewer: str, decisions: list[dict]) -> None:
    header = (
        f"# Review decisions for templates/{task}.yaml: `mmdata templates review --task {task} "
        f"--decisions <this file>` applies them.\n"
    )
    body = yaml.safe_dump(
        {"task": task, "reviewer": reviewer, "decisions": decisions},
        sort_keys=False,
        allow_unicode=True,
        width=10_000,
    )
    atomic_write_text(Path(path), header + body)


def _mark(entry: TemplateEntry, decision: str, reviewer: str, note: str | None) -> None:
    prov = dict(entry.provenance or {})
    prov["review"] = {"by": reviewer, "date": dt.date.today().isoformat(), "decision": decision}
    if note:
        prov["review"]["note"] = note
    entry.provenance = prov
    if decision == "accept":
        entry.status, entry.reasons = "accepted", []
    else:
        entry.status = "rejected"
        entry.reasons = [f"reviewer: {note or 'rejected'}"]


def apply_decisions(
    tf: TemplateFile,
    spec: TaskSpec,
    decisions: list[dict],
    *,
    reviewer: str,
    embedder: Embedder | None = None,
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
) -> ReviewReport:
    """Validate the file, then apply accept/reject decisions to its candidates (in place)."""
    report = ReviewReport(task=spec.name)
    report.validation = validate_file(tf, spec, embedder=embedder, threshold=threshold)
    by_id = tf.by_id()
    for d in decisions:
        tid, decision = str(d["id"]), d["decision"]
        entry = by_id.get(tid)
        if entry is None:
            report.refused[tid] = "no template with this id"
            continue
        if "text" in d and d["text"] != entry.text:
            report.refused[tid] = (
                "the template's text differs from the text the decision was made on"
            )
            continue
        target = "accepted" if decision == "accept" else "rejected"
        if entry.status == target:
            report.unchanged.append(tid)
            continue
        if entry.source == "seed":
            report.refused[tid] = "seed templates are not reviewed"
            continue
        if decision == "accept" and _rejected_by_review(entry):
            # a reviewer changes a review decision: validate it again as a candidate
            entry.status, entry.reasons = "candidate", []
            validate_file(tf, spec, embedder=embedder, threshold=threshold, ids={tid})
        if decision == "accept":
            problems = check_template(entry.text, spec)
            if entry.status != "candidate" or problems:
                why = "; ".join(problems or entry.reasons) or f"status is {entry.status}"
                report.refused[tid] = f"cannot accept an invalid template: {why}"
                continue
        _mark(entry, decision, reviewer, d.get("note"))
        (report.accepted if decision == "accept" else report.rejected).append(tid)
    return report


def _rejected_by_review(entry: TemplateEntry) -> bool:
    return (
        entry.status == "rejected"
        and bool(entry.reasons)
        and all(r.startswith("reviewer:") for r in entry.reasons)
    )


def _describe(entry: TemplateEntry) -> str:
    p = entry.provenance or {}
    bits = [p.get("model"), p.get("endpoint_kind"), p.get("date")]
    return ", ".join(str(b) for b in bits if b)


def interactive_review(
    tf: TemplateFile,
    spec: TaskSpec,
    *,
    reviewer: str,
    record: Callable[[dict], None],
    save: Callable[[TemplateFile], object],
    embedder: Embedder | None = None,
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> ReviewReport:
    """Ask about each valid candidate: [a]ccept, [r]eject (optionally `r <note>`), [s]kip, [q]uit.

    The file is validated first; each decision is recorded and the file saved at once, so quitting
    (or Ctrl-C) keeps every decision made so far.
    """
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    report = ReviewReport(task=spec.name)
    report.validation = validate_file(tf, spec, embedder=embedder, threshold=threshold)
    save(tf)
    candidates = tf.with_status("candidate")
    accepted = tf.with_status("accepted")
    print(
        f"{spec.name}: {len(candidates)} candidates to review ({len(accepted)} accepted); "
        f"task: {spec.description}; markers {list(spec.markers)}, placeholders "
        f"{['{' + p + '}' for p in spec.placeholders]}",
        file=out,
    )
    for k, entry in enumerate(candidates, 1):
        print(f"\n[{k}/{len(candidates)}] {entry.text}\n    ({_describe(entry)})", file=out)
        while True:
            print("accept [a], reject [r <note>], skip [s], quit [q]? ", end="", file=out)
            out.flush()
            line = stdin.readline()
            if not line:  # end of input: stop like quit
                return report
            answer = line.strip()
            cmd, _, note = answer.partition(" ")
            cmd = cmd.lower()
            if cmd in ("a", "accept"):
                decision = "accept"
            elif cmd in ("r", "reject"):
                decision = "reject"
            elif cmd in ("s", "skip"):
                decision = None
            elif cmd in ("q", "quit"):
                return report
            else:
                continue
            break
        if decision is None:
            continue
        _mark(entry, decision, reviewer, note.strip() or None)
        (report.accepted if decision == "accept" else report.rejected).append(entry.id)
        record(
            {"id": entry.id, "decision": decision, "text": entry.text}
            | ({"note": note.strip()} if note.strip() else {})
        )
        save(tf)
    return report


def merge_decisions(existing: list[dict], new: dict) -> list[dict]:
    out = [d for d in existing if d.get("id") != new["id"]]
    out.append(new)
    return out
