"""`mmdata templates generate|validate|review|list|server`: LLM-written instruction templates.

Endpoint settings come from flags or the environment, never from config files:
`--base-url`/`MMDATA_LLM_BASE_URL` (or `OPENAI_BASE_URL`), `--model`/`MMDATA_LLM_MODEL`,
`--mode`/`MMDATA_LLM_MODE`, and the key from `--api-key-file PATH` (a file holding only the key) or
`MMDATA_LLM_API_KEY` / `OPENAI_API_KEY`. (`--api-key KEY` still works, with a warning: other users
see the command line in `ps`.) With none set, a local server started by `make llm-server-start` is
used, and `--local` starts one just for the command.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmdata.core.tasks import TASKS, get_task
from mmdata.errors import describe_os_error, os_error_reason, print_error
from mmdata.flags import accept_underscores
from mmdata.llm import store
from mmdata.llm.prompts import Sampling
from mmdata.llm.validate import DEFAULT_SIMILARITY_THRESHOLD, default_embedder, validate_file

if TYPE_CHECKING:
    from mmdata.llm.cache import ResponseCache
    from mmdata.llm.client import EndpointConfig, LLMClient

DEFAULT_CONCURRENCY = 4  # mmdata.llm.generate.DEFAULT_CONCURRENCY, without importing openai here

log = logging.getLogger(__name__)


def _number(kind: type, low: float, *, low_open: bool = False, high: float | None = None):
    """An argparse `type` that reads an int or float and checks its range, so a bad value is a
    one-line usage error (a negative --n or --max-retries, or --timeout 0, used to run and fail
    with a misleading message)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not {'an integer' if kind is int else 'a number'}: {text!r}"
            ) from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            lo = f"> {low:g}" if low_open else f">= {low:g}"
            rng = lo if high is None else f"{lo} and <= {high:g}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


_COUNT = _number(int, 1)
_NON_NEGATIVE_INT = _number(int, 0)
_SECONDS = _number(float, 0, low_open=True)
_FRACTION = _number(float, 0, low_open=True, high=1)


def _tasks(arg: list[str] | None) -> list[str]:
    if not arg or "all" in arg:
        return list(TASKS)
    for t in arg:
        get_task(t)
    return arg


@contextlib.contextmanager
def _template_locks(tasks: list[str], directory: str | Path | None) -> Iterator[None]:
    """Hold the writer lock of every task's template file (`store.writer_lock`; raises
    `store.TemplateFileBusy` when another command holds one).

    What taking the locks created goes again on the way out when the command wrote nothing there:
    a new lock file beside a template file that still does not exist (removed while it is held, so
    no other command can be holding it), then the folders made for them, once empty. A run that
    fails before writing a template leaves the file system as it found it.
    """
    root = store.templates_dir(directory)
    new_dirs = [d for d in (root, *root.parents) if not d.exists()]  # deepest first

    def drop_if_unused(path: Path, lock: Path) -> None:
        if not path.exists():
            lock.unlink(missing_ok=True)

    try:
        with contextlib.ExitStack() as held:
            for task in tasks:
                path = store.task_path(task, directory)
                lock = store.lock_path(path)
                new_lock = not lock.exists()
                held.enter_context(store.writer_lock(path))
                if new_lock:
                    held.callback(drop_if_unused, path, lock)  # runs before the lock is let go
            yield
    finally:
        for d in new_dirs:
            try:
                d.rmdir()
            except OSError:  # not empty (or not ours to remove): it stays, and so do its parents
                break


def _writes_templates(cmd: Callable[[argparse.Namespace, list[str]], int]) -> Callable:
    """Run `cmd` (which changes an existing templates folder) holding the writer lock of every
    template file it may change (see `_template_locks`); another command on the same task makes it
    stop at once, exit status 2, and so does a --templates-dir that does not exist."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace, beam_args: list[str]) -> int:
        if getattr(args, "check", False):  # `validate --check` only reads
            return cmd(args, beam_args)
        if _no_such_dir(args):  # before the locks, which would create it
            return 2
        tasks = [args.task] if isinstance(args.task, str) else _tasks(args.task)
        try:
            with _template_locks(tasks, args.templates_dir):
                return cmd(args, beam_args)
        except store.TemplateFileBusy as e:
            print_error("templates", e)
            return 2

    return run


@dataclass
class Endpoint:
    config: EndpointConfig
    local: bool


class EndpointSettingsError(ValueError):
    """The endpoint settings are missing or unusable (no URL, no model, an unreadable key file): a
    usage error, reported as one line with exit status 2 before anything is sent or written."""


NO_ENDPOINT_MESSAGE = (
    "no LLM endpoint configured: pass --base-url URL and --model NAME (or set MMDATA_LLM_BASE_URL "
    "and MMDATA_LLM_MODEL), with the API key in MMDATA_LLM_API_KEY (or OPENAI_API_KEY, or a file "
    "given with --api-key-file PATH) if the endpoint needs one; or start the local server with "
    "`make llm-server-start`, or add --local to start one for this command"
)


API_KEY_ON_COMMAND_LINE_WARNING = (
    "warning: --api-key puts the key on the command line, where other users of this machine can "
    "read it (ps, /proc/<pid>/cmdline); set MMDATA_LLM_API_KEY (or OPENAI_API_KEY) or pass "
    "--api-key-file PATH instead"
)


def read_api_key_file(path: str | Path) -> str:
    """The key a file holds (surrounding whitespace and the final newline stripped).

    Raises EndpointSettingsError, naming the file but never showing what it holds, when it cannot
    be read, is empty, or holds more than one word."""
    p = Path(path).expanduser()
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as e:
        raise EndpointSettingsError(
            f"cannot read the API key file {str(path)!r} given with --api-key-file: "
            f"{os_error_reason(e)}"
        ) from None
    except UnicodeDecodeError:
        raise EndpointSettingsError(
            f"the API key file {str(path)!r} given with --api-key-file is not UTF-8 text"
        ) from None
    key = text.strip()
    if not key:
        raise EndpointSettingsError(
            f"the API key file {str(path)!r} given with --api-key-file is empty; put the key in it"
        )
    if len(key.split()) > 1:
        raise EndpointSettingsError(
            f"the API key file {str(path)!r} given with --api-key-file holds more than one word "
            "or line; it should hold the key alone"
        )
    return key


def _api_key(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The API key and where it came from: --api-key-file, then --api-key (with a warning), then
    MMDATA_LLM_API_KEY / OPENAI_API_KEY."""
    from mmdata.llm.client import api_key_env

    path = getattr(args, "api_key_file", None)
    if path is not None:
        return read_api_key_file(path), f"--api-key-file {path}"
    if getattr(args, "api_key", None) is not None:
        print(API_KEY_ON_COMMAND_LINE_WARNING, file=sys.stderr)
        if args.api_key:
            return args.api_key, "--api-key"
    return api_key_env()


@contextlib.contextmanager
def resolve_endpoint(args: argparse.Namespace) -> Iterator[Endpoint]:
    """Flags > environment > a running local server > `--local` (start one for this command).

    Raises EndpointSettingsError when no endpoint is configured or a setting is unusable."""
    from mmdata.llm.client import EndpointConfig, redact_url

    base_url, base_url_from = args.base_url, "--base-url"
    for var in ("MMDATA_LLM_BASE_URL", "OPENAI_BASE_URL"):
        if not base_url:
            base_url, base_url_from = os.environ.get(var), var
    model = args.model or os.environ.get("MMDATA_LLM_MODEL")
    mode = args.mode or os.environ.get("MMDATA_LLM_MODE")
    api_key, api_key_from = _api_key(args)
    common = dict(
        api_key=api_key,
        api_key_from=api_key_from,
        timeout=args.timeout,
        max_retries=args.max_retries,
    )
    if base_url and not args.local:
        if not model:
            where = "--base-url" if base_url_from == "--base-url" else f"${base_url_from}"
            raise EndpointSettingsError(
                f"no model given for the endpoint {redact_url(base_url)} (from {where}): pass "
                "--model NAME (or set MMDATA_LLM_MODEL)"
            )
        config = EndpointConfig(
            base_url, model, mode or "chat", base_url_from=base_url_from, **common
        )
        yield Endpoint(config, local=False)
        return

    from mmdata.llm import server

    state = None if args.local else server.running_server()
    if state is not None:
        yield Endpoint(
            EndpointConfig(
                state["base_url"],
                model or state["model"],
                mode or "completion",
                kind=server.ENDPOINT_KIND,
                **common,
            ),
            local=True,
        )
        return
    if not args.local:
        raise EndpointSettingsError(NO_ENDPOINT_MESSAGE)
    with server.LocalLLMServer() as srv:
        yield Endpoint(
            EndpointConfig(
                srv.base_url,
                model or srv.alias,
                mode or "completion",
                kind=server.ENDPOINT_KIND,
                **common,
            ),
            local=True,
        )


def _print_validation(rep, out=None, verbose: bool = False) -> None:
    out = out or sys.stdout
    print(
        f"{rep.task}: checked {rep.checked}, {rep.kept} candidates kept, "
        f"{len(rep.rejected)} rejected"
        + (
            f" ({', '.join(f'{k}={v}' for k, v in rep.reason_counts().items())})"
            if rep.rejected
            else ""
        ),
        file=out,
    )
    if verbose:
        for f in rep.rejected:
            print(f"  rejected {f.id}: {f.text!r}\n    " + "; ".join(f.reasons), file=out)
    for f in rep.invalid_accepted:
        print(f"  INVALID accepted {f.id}: {f.text!r}: " + "; ".join(f.reasons), file=out)


@contextlib.contextmanager
def _redacting_logs(config: EndpointConfig) -> Iterator[None]:
    """While the command runs, the root handlers write `***` for the API key and the URL's secrets
    (httpx logs every request's URL, userinfo included, under -v)."""
    from mmdata.llm.client import RedactSecrets, url_secrets

    flt = RedactSecrets([config.api_key, *url_secrets(config.base_url)])
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(flt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(flt)


def cmd_generate(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Check the endpoint first, then take the template files' locks (creating --templates-dir when
    needed): a run whose endpoint is down, refuses the key or lacks the model writes nothing.
    Ctrl-C at any point ends it at once with one line and exit status 130."""
    from mmdata.llm.cache import ResponseCache

    if not getattr(args, "verbose", False):
        # one INFO line per HTTP request from the openai client's transport is noise here
        for name in ("httpx", "httpx2", "openai"):
            logging.getLogger(name).setLevel(logging.WARNING)
    tasks = _tasks(args.task)
    sampling = Sampling(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        n_shots=args.shots,
        grammar=args.grammar,
        grammar_field=args.grammar_field,
        grammar_max_text=args.grammar_max_text,
        group_markers=args.group_markers,
    )
    cache = ResponseCache(args.cache_dir, enabled=not args.no_cache)
    try:
        with resolve_endpoint(args) as ep, _redacting_logs(ep.config):
            return _generate_at(args, tasks, ep, cache, sampling)
    except EndpointSettingsError as e:  # a usage error, as argparse's: exit 2
        print_error("templates", e)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the check and the generation loop (say: validating)
        print(
            "\ninterrupted: rerun the same command to resume (responses are cached)",
            file=sys.stderr,
        )
        return 130


def _generate_at(
    args: argparse.Namespace,
    tasks: list[str],
    ep: Endpoint,
    cache: ResponseCache,
    sampling: Sampling,
) -> int:
    """`templates generate` once the endpoint is known: check it, then generate under the locks."""
    from mmdata.llm.client import LLMClient, LLMError, redact_url

    client = LLMClient(ep.config, cache)
    try:
        client.check_model()
    except LLMError as e:
        print_error("templates", e)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted while checking the endpoint at {client.url}; nothing was written",
            file=sys.stderr,
        )
        return 130
    print(
        f"endpoint: {redact_url(ep.config.base_url)} model={ep.config.model} "
        f"route={ep.config.route}"
    )
    try:
        cache.check_writable()
    except OSError as e:
        print_error(
            "templates",
            f"the response cache {cache.directory} cannot be written ({describe_os_error(e)}); "
            "pass --cache-dir DIR (or set MMDATA_LLM_CACHE) to a writable folder, or --no-cache",
        )
        return 2
    try:
        with _template_locks(tasks, args.templates_dir):
            return _generate_tasks(args, tasks, client, sampling)
    except store.TemplateFileBusy as e:
        print_error("templates", e)
        return 2


def _generate_tasks(
    args: argparse.Namespace, tasks: list[str], client: LLMClient, sampling: Sampling
) -> int:
    """`templates generate` for each task in turn, once the endpoint answered."""
    from mmdata.llm.client import LLMError
    from mmdata.llm.generate import generate

    status = 0
    for task in tasks:
        spec = get_task(task)
        tf = store.load(task, args.templates_dir)
        try:
            rep = generate(
                tf,
                spec,
                client,
                args.n,
                seed=args.seed,
                sampling=sampling,
                concurrency=args.concurrency,
                save=store.save,
            )
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: candidates received so far are saved in {tf.path}; "
                "rerun the same command to resume (responses are cached)",
                file=sys.stderr,
            )
            return 130
        except LLMError as e:
            print_error("templates", f"{e} (candidates received so far are saved in {tf.path})")
            return 2
        print(rep.summary())
        if rep.failed and not rep.responses:
            print_error(
                "templates", f"every request failed, e.g. {next(iter(rep.failed.values()))}"
            )
            status = 2
            continue  # nothing new to validate or write
        if not args.no_validate:
            vrep = validate_file(
                tf,
                spec,
                embedder=None if args.no_embed else default_embedder(),
                threshold=args.threshold,
                # with the candidates an interrupted run saved unvalidated and this one met again
                ids=set(rep.added) | set(rep.present_candidates),
            )
            store.save(tf)
            _print_validation(vrep, verbose=args.verbose_reasons)
        print(f"wrote {tf.path}")
    return status


def _no_such_dir(args: argparse.Namespace) -> bool:
    """True (after saying so) when --templates-dir names a folder that does not exist: reading it would
    find no templates and pass a check that never looked at any."""
    d = getattr(args, "templates_dir", None)
    if d and not Path(d).is_dir():
        print_error("templates", f"templates folder {d!r} does not exist")
        return True
    return False


@_writes_templates
def cmd_validate(args: argparse.Namespace, beam_args: list[str]) -> int:
    if _no_such_dir(args):
        return 2
    embedder = None if args.no_embed else default_embedder()
    status = 0
    for task in _tasks(args.task):
        spec = get_task(task)
        tf = store.load(task, args.templates_dir)
        rep = validate_file(tf, spec, embedder=embedder, threshold=args.threshold)
        _print_validation(rep, verbose=args.verbose_reasons)
        if not rep.ok:
            status = 1
        if args.check:
            if rep.rejected:
                status = 1
        else:
            store.save(tf)
    return status


@_writes_templates
def cmd_review(args: argparse.Namespace, beam_args: list[str]) -> int:
    if _no_such_dir(args):
        return 2
    from mmdata.llm import review

    spec = get_task(args.task)
    tf = store.load(args.task, args.templates_dir)
    embedder = None if args.no_embed else default_embedder()
    reviewer = args.reviewer or os.environ.get("MMDATA_REVIEWER") or getpass.getuser()
    if args.decisions:
        data = review.load_decisions(args.decisions)
        if data.get("task", args.task) != args.task:
            print_error("templates", f"{args.decisions} is for task {data.get('task')!r}")
            return 2
        rep = review.apply_decisions(
            tf,
            spec,
            data["decisions"],
            reviewer=data.get("reviewer") or reviewer,
            embedder=embedder,
            threshold=args.threshold,
        )
        store.save(tf)
    else:
        if not sys.stdin.isatty() and not args.yes_stdin:
            print_error(
                "templates",
                "interactive review needs a terminal; pass --decisions FILE "
                "(or --yes-stdin to read answers from standard input)",
            )
            return 2
        record_path = (
            Path(args.record)
            if args.record
            else review.decisions_path(args.task, args.templates_dir)
        )
        existing = []
        if record_path.exists():
            existing = review.load_decisions(record_path)["decisions"]
        state = {"decisions": existing}

        def record(d: dict) -> None:
            state["decisions"] = review.merge_decisions(state["decisions"], d)
            review.save_decisions(record_path, args.task, reviewer, state["decisions"])

        try:
            rep = review.interactive_review(
                tf,
                spec,
                reviewer=reviewer,
                record=record,
                save=store.save,
                embedder=embedder,
                threshold=args.threshold,
            )
        except KeyboardInterrupt:
            print("\ninterrupted; decisions so far are saved", file=sys.stderr)
            return 130
        print(f"decisions recorded in {record_path}")
    print(rep.summary())
    for tid, why in rep.refused.items():
        print(f"  refused {tid}: {why}")
    c = tf.counts()
    print(
        f"{args.task}: {c['accepted']} accepted, {c['candidate']} candidates, "
        f"{c['rejected']} rejected"
    )
    return 1 if rep.refused and args.strict else 0


def cmd_list(args: argparse.Namespace, beam_args: list[str]) -> int:
    if _no_such_dir(args):
        return 2
    rows = []
    for task in _tasks(args.task):
        tf = store.load(task, args.templates_dir)
        c = tf.counts()
        seeds = sum(1 for t in tf.with_status("accepted") if t.source == "seed")
        models = sorted(
            {
                f"{t.provenance['model']}/{t.provenance.get('endpoint_kind')}"
                for t in tf.with_status("accepted")
                if t.source == "llm" and (t.provenance or {}).get("model")
            }
        )
        rows.append((task, c["accepted"], seeds, c["candidate"], c["rejected"], ", ".join(models)))
        if args.show:
            for t in tf.templates:
                if args.status and t.status != args.status:
                    continue
                p = t.provenance or {}
                prov = (
                    f" [{p.get('model')}, {p.get('endpoint_kind')}, {p.get('date')}]" if p else ""
                )
                print(f"{t.status:9s} {t.id}: {t.text}{prov}")
                for r in t.reasons:
                    print(f"            - {r}")
    print(
        f"{'task':16s} {'accepted':>8s} {'(seeds)':>8s} {'candidate':>9s} {'rejected':>8s}  "
        "llm provenance"
    )
    for r in rows:
        print(f"{r[0]:16s} {r[1]:8d} {r[2]:8d} {r[3]:9d} {r[4]:8d}  {r[5]}")
    return 0


def cmd_server(args: argparse.Namespace, beam_args: list[str]) -> int:
    from mmdata.llm import server

    argv = [args.action]
    if args.port:
        argv += ["--port", str(args.port)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return server.main(argv)


def _add_common(p: argparse.ArgumentParser, multi_task: bool) -> None:
    if multi_task:
        p.add_argument("--task", action="append", help="task name (repeatable; default: all)")
    p.add_argument(
        "--templates-dir",
        default=None,
        help="folder of <task>.yaml files (default: the repository's templates/)",
    )
    p.add_argument(
        "--threshold",
        type=_FRACTION,
        default=DEFAULT_SIMILARITY_THRESHOLD,
        help="MiniLM cosine similarity at or above which a candidate is a near-duplicate",
    )
    p.add_argument(
        "--no-embed", action="store_true", help="skip the sentence-embedding near-duplicate check"
    )
    p.add_argument("--verbose-reasons", action="store_true", help="print every rejection")


def register(subparsers: argparse._SubParsersAction) -> None:
    top = subparsers.add_parser(
        "templates",
        help="LLM-written instruction templates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="templates_command", metavar="<action>")
    sub.required = True

    g = sub.add_parser("generate", help="ask an LLM for rephrased templates (added as candidates)")
    _add_common(g, multi_task=True)
    g.add_argument("--n", type=_COUNT, default=100, help="requests (one rephrasing each)")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (…/v1)")
    g.add_argument("--model", default=None)
    g.add_argument(
        "--mode",
        choices=["chat", "completion"],
        default=None,
        help="chat for instruction-tuned models, completion (few-shot) for base models",
    )
    key = g.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key-file",
        default=None,
        metavar="PATH",
        help="read the API key from this file (it holds the key alone); default: "
        "$MMDATA_LLM_API_KEY or $OPENAI_API_KEY",
    )
    # Kept for compatibility; warns: other users of the machine see a command line (ps).
    key.add_argument("--api-key", default=None, help=argparse.SUPPRESS)
    g.add_argument(
        "--local",
        action="store_true",
        help="start the bundled local llama.cpp server for this command",
    )
    g.add_argument("--seed", type=int, default=0, help="request i uses seed+i")
    g.add_argument("--concurrency", type=_COUNT, default=DEFAULT_CONCURRENCY)
    g.add_argument("--temperature", type=_number(float, 0), default=Sampling.temperature)
    g.add_argument("--top-p", type=_FRACTION, default=Sampling.top_p)
    g.add_argument("--max-tokens", type=_COUNT, default=Sampling.max_tokens)
    g.add_argument("--shots", type=_COUNT, default=Sampling.n_shots, help="examples per prompt")
    g.add_argument(
        "--grammar",
        choices=["gbnf"],
        default=None,
        help="constrained decoding: a GBNF grammar that places each marker and placeholder exactly "
        "once (llama.cpp servers; the reply is still validated)",
    )
    g.add_argument(
        "--grammar-field",
        default=Sampling.grammar_field,
        help="request field the grammar goes in (llama.cpp: grammar; vLLM: guided_grammar)",
    )
    g.add_argument(
        "--grammar-max-text",
        type=_COUNT,
        default=None,
        metavar="N",
        help="with --grammar: at most N characters of free text between two markers/placeholders",
    )
    g.add_argument(
        "--group-markers",
        action="store_true",
        help="tasks whose markers share one role (subject2img): show the marker list as one token "
        "{refs} to the model and expand it back before validation",
    )
    g.add_argument("--timeout", type=_SECONDS, default=60.0, help="seconds per request")
    g.add_argument("--max-retries", type=_NON_NEGATIVE_INT, default=5)
    g.add_argument("--cache-dir", default=None, help="response cache (default ~/.cache/mmdata/llm)")
    g.add_argument("--no-cache", action="store_true")
    g.add_argument("--no-validate", action="store_true", help="do not validate the new candidates")
    g.set_defaults(func=cmd_generate)

    v = sub.add_parser("validate", help="check templates; reject invalid and duplicate candidates")
    _add_common(v, multi_task=True)
    v.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any template is invalid (for CI)",
    )
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("review", help="accept/reject candidates (terminal, or a decisions file)")
    _add_common(r, multi_task=False)
    r.add_argument("--task", required=True)
    r.add_argument("--decisions", default=None, help="apply decisions from this YAML file")
    r.add_argument(
        "--record",
        default=None,
        help="where interactive decisions go (default templates/reviews/<task>.yaml)",
    )
    r.add_argument("--reviewer", default=None)
    r.add_argument(
        "--yes-stdin",
        action="store_true",
        help="read the interactive answers from standard input when it is not a terminal (scripts)",
    )
    r.add_argument("--strict", action="store_true", help="exit 1 if any decision is refused")
    r.set_defaults(func=cmd_review)

    ls = sub.add_parser("list", help="counts per task (and the templates with --show)")
    ls.add_argument("--task", action="append")
    ls.add_argument("--templates-dir", default=None)
    ls.add_argument("--show", action="store_true")
    ls.add_argument("--status", choices=list(store.STATUSES), default=None)
    ls.set_defaults(func=cmd_list)

    s = sub.add_parser("server", help="start/stop the bundled local LLM server")
    s.add_argument("action", choices=["start", "stop", "status", "run"])
    s.add_argument("--port", type=int, default=None)
    s.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for generation (default: llama.cpp's, half the cores)",
    )
    s.set_defaults(func=cmd_server)
    accept_underscores(top)
