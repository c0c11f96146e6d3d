"""The `mmdata` command: thin over pipelines/ and the tool modules.

Each tool module exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func=callable(args, beam_args) -> int` on the parser. Arguments the subcommand does not know are
passed to Beam as pipeline options (`--runner`, `--direct_num_workers`, ...).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

# Modules that add subcommands. Add one line per tool module.
SUBCOMMAND_MODULES: list[str] = [
    "pipelines.cli",
    "mmdata.weights_cli",
    "mmdata.corpus.cli",
    "mmdata.train.cli",
    "mmdata.llm.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmdata",
        allow_abbrev=False,
        description="Build multi-modal instruction datasets for image generation, and train on them.",
        epilog="The job subcommands (demo, ingest) pass options they do not know to Apache Beam as "
        "pipeline options (--runner, --direct_num_workers, ...).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # No prefix matching: `--quality.min_sid` must be an error, not `--quality.min_side`.
    for p in [parser, *sub.choices.values()]:
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    child.allow_abbrev = False
    return parser


class DropImportNoise(logging.Filter):
    """Beam warnings that are expected and tell a user nothing: the optional GCP client is absent (without
    [gcp]); and, relayed from local worker processes, the two start-up warnings every worker logs."""

    NOISE = (
        "apitools not found",
        "No semi_persistent_directory found",
        "Discarding unparseable args",
        "Finished listing",  # one INFO line per file pattern Beam's filesystems match
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


def _multi_processing_local(argv: list[str]) -> bool:
    """Whether the command line asks for local worker processes (`--direct_running_mode
    multi_processing` on the DirectRunner, the default runner)."""
    mode = runner = None
    for i, a in enumerate(argv):
        for flag in ("--direct_running_mode", "--runner"):
            if a == flag and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(flag + "="):
                value = a.split("=", 1)[1]
            else:
                continue
            if flag == "--runner":
                runner = value
            else:
                mode = value
    from mmdata.beam_worker import is_direct

    return mode == "multi_processing" and is_direct(runner)


def main(argv: list[str] | None = None) -> int:
    if _multi_processing_local(sys.argv[1:] if argv is None else argv):
        from mmdata.beam_worker import worker_zygote

        # Worker processes are forked from one that imports Beam's worker and the job's modules: start
        # it now, so it imports beside this process's own imports rather than after them.
        worker_zygote()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(DropImportNoise())
    logging.getLogger("apache_beam.io.gcp").setLevel(logging.WARNING)
    # Beam logs one INFO line per string annotation it reads (ours are strings: `from __future__ import
    # annotations`) and treats them as Any; dozens of lines per job that tell a user nothing.
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)
    # Ports of the local runner's gRPC servers, and worker INFO lines relayed (multi_processing mode).
    logging.getLogger("apache_beam.runners.portability.fn_api_runner.worker_handlers").setLevel(
        logging.WARNING
    )
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.WARNING)
    # "Creating state cache with size 0": the in-process runner's cache is off unless asked for.
    logging.getLogger("apache_beam.runners.worker.statecache").setLevel(logging.WARNING)
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        parser.print_help(sys.stderr)  # the command list, not only "arguments are required"
        return 2
    args, rest = parser.parse_known_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    if rest and not getattr(args, "accepts_beam_args", False):
        _subparser(parser, args).error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        from mmdata.runner import unknown_beam_args

        if unknown := unknown_beam_args(rest):
            sub = _subparser(parser, args)
            hints = "".join(_flag_hint(parser, sub, a) for a in unknown)
            sub.error(
                f"unrecognized arguments (neither {args.command} options nor Beam pipeline options): "
                f"{' '.join(unknown)}{hints}; see `mmdata {args.command} --help`"
            )
    try:
        return int(args.func(args, rest) or 0)
    except Exception as e:
        code = _user_error_code(e)
        if args.verbose or code is None:
            raise
        from mmdata.errors import print_error

        print_error(args.command, e)  # an OSError names its path and says what is wrong in words
        return code


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")]


def _flag_hint(parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, arg: str) -> str:
    """' (did you mean --shards.maxcount?)' for a misspelt flag of this subcommand, or ' (an option
    of `mmdata demo`)' for a flag of another one; '' when neither."""
    flag = arg.split("=", 1)[0]
    if not flag.startswith("--"):
        return ""
    spelled = {o.replace("-", "_"): o for o in _option_strings(sub)}
    close = difflib.get_close_matches(flag.replace("-", "_"), spelled, n=1, cutoff=0.8)
    if close:
        return f" ({flag}: did you mean {spelled[close[0]]}?)"
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    others = [
        name
        for name, p in (action.choices.items() if action is not None else ())
        if p is not sub and flag in _option_strings(p)
    ]
    if others:
        return f" ({flag} is an option of {', '.join(f'`mmdata {n}`' for n in others)})"
    return ""


def _subparser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand `args` were parsed for, so that its usage errors read
    `mmdata <command>: error: ...` like argparse's own (not `mmdata: error: ...`)."""
    while True:
        action = next(
            (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None
        )
        name = getattr(args, action.dest, None) if action is not None else None
        if name not in (action.choices if action is not None else {}):
            return parser
        parser = action.choices[name]


# Errors mmdata raises to tell a user what to fix, beyond OSError/ValueError: (module, class) -> exit code.
# Looked up in sys.modules only (an error of a module never imported cannot have been raised), so the
# command does not import torch or Beam to report an error.
RUNTIME_USER_ERRORS = {
    ("mmdata.weights", "WeightsError"): 1,  # missing / wrong-hash / unloadable weights
    ("mmdata.models.base", "DeviceUnavailableError"): 1,  # --device cuda without a GPU
    ("mmdata.io.sourcebytes", "SourceChangedError"): 1,  # an input file changed during the job
    ("mmdata.train.data", "CorruptDataError"): 1,  # a shard the trainer cannot read
    ("mmdata.llm.store", "TemplateFileBusy"): 1,  # another run holds the templates file
    ("mmdata.llm.client", "LLMError"): 1,  # endpoint unreachable, auth, quota, model not found
    ("mmdata.llm.server", "LLMServerError"): 1,  # local server not installed, or failed to start
    ("mmdata.errors", "RunnerUnavailableError"): 1,  # runner extra, Java or job jar missing
}


def _user_error_code(e: BaseException) -> int | None:
    """The exit code for an error reported as one line (no traceback), or None for a bug's traceback.

    OSError (missing inputs, an output path under a file, permissions, a full disk), ValueError
    (ConfigError, TemplateError, bad arguments) and YAML parse errors of hand-edited files: 2, as
    before; mmdata's own runtime errors (RUNTIME_USER_ERRORS): 1."""
    if isinstance(e, OSError | ValueError):
        return 2
    yaml = sys.modules.get("yaml")
    if yaml is not None and isinstance(e, yaml.YAMLError):
        return 2
    for (module, name), code in RUNTIME_USER_ERRORS.items():
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(e, cls):
            return code
    return None


if __name__ == "__main__":
    sys.exit(main())
