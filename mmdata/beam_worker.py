"""Beam's SDK worker for local multi-process runs (`--direct_running_mode=multi_processing`), with its
start-up chatter kept off the terminal.

Each worker process Beam starts prints, before any pipeline option can quiet it, a handful of lines
that say nothing to a user: `apitools not found` (Beam's BigQuery client stub, logged through the root
logger, which also installs a stderr handler at INFO), `Logging handler created.`, `No
semi_persistent_directory found`, `Discarding unparseable args` (the runner's own flags). This module
installs the worker's stderr handler first (those lines dropped, the format of mmdata's own log lines),
then runs Beam's `sdk_worker_main` unchanged. Every other record still reaches stderr (mmdata's INFO
progress lines included; Beam's own loggers are at WARNING in local workers, see
`mmdata.runner.quiet_worker_logs`) and, as before, the runner.
"""

from __future__ import annotations

import logging
import runpy
import sys

# Substrings of the start-up lines dropped from the worker's stderr (Beam 2.7x wording).
BENIGN = (
    "apitools not found",
    "Logging handler created.",
    "No semi_persistent_directory found",
    "Discarding unparseable args",
)
# The loggers those lines come from: the root logger (apitools), Beam's worker main (run as
# `__main__`), its pipeline options.
BENIGN_LOGGERS = ("", "__main__", "apache_beam.options.pipeline_options")
MODULE = "mmdata.beam_worker"
BEAM_MODULE = "apache_beam.runners.worker.sdk_worker_main"


class _DropBenign(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is still shown
            return True
        return not any(text in message for text in BENIGN)


def install_stderr_handler() -> logging.Handler:
    """The worker's stderr handler, Beam's start-up lines dropped. Installed on the root logger before
    Beam logs anything, so no implicit `logging.basicConfig` adds another one."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_DropBenign())
    logging.getLogger().addHandler(handler)
    # The same lines are also relayed to the runner (Beam's log handler, added later to the root
    # logger): drop them at the loggers that make them, before any handler sees them.
    for name in BENIGN_LOGGERS:
        logging.getLogger(name).addFilter(_DropBenign())
    return handler


def main() -> None:
    install_stderr_handler()
    from mmdata.runner import shorten_state_sampling

    shorten_state_sampling()  # bundles end without waiting up to 200 ms for the sampler thread
    sys.argv[0] = BEAM_MODULE
    runpy.run_module(BEAM_MODULE, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
