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
import threading
from typing import Any

# Substrings of the start-up lines dropped from the worker's stderr (Beam 2.7x wording).
BENIGN = (
    "apitools not found",
    "Logging handler created.",
    "No semi_persistent_directory found",
    "Discarding unparseable args",
)

MODULE = "mmdata.beam_worker"
BEAM_MODULE = "apache_beam.runners.worker.sdk_worker_main"
# The loggers those lines come from: the root logger (apitools), Beam's worker main (`__main__` when run
# as a program, its module name when a forked worker calls it), its pipeline options.
BENIGN_LOGGERS = ("", "__main__", "apache_beam.options.pipeline_options", BEAM_MODULE)


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


def main(*, imported: bool = False) -> None:
    """Run Beam's worker: as a program (`runpy`, as Beam starts it), or, in a worker forked from the
    zygote, which has imported it already, by calling its `main`."""
    install_stderr_handler()
    from mmdata.runner import shorten_state_sampling

    shorten_state_sampling()  # bundles end without waiting up to 200 ms for the sampler thread
    sys.argv[0] = BEAM_MODULE
    if imported:
        import importlib

        importlib.import_module(BEAM_MODULE).main(sys.argv)
    else:
        runpy.run_module(BEAM_MODULE, run_name="__main__", alter_sys=True)


# ---------------------------------------------------------------------------------------------------------
# Warm start: workers forked from a process that has already imported Beam's worker and the job's modules.
#
# Beam starts each local worker with `python -m <worker module>` and waits for it: on this 2-core machine
# the import of Beam's worker alone takes 0.6-0.8 s a process, and two workers importing at once while the
# runner builds the graph cost a 2-worker job about 2 s before its first bundle ran (1 worker, in-process:
# 0.03 s). So the runner starts one "zygote" process early (when it reads the pipeline options), which
# imports all that once, while the graph is still being built; the command Beam runs for a worker is then
# a thin client (`--via SOCKET`, Python start-up plus this module: about 30 ms) that hands its environment
# (Beam passes the worker's control/logging addresses and options in it), working directory and
# arguments to the zygote, which forks a worker that runs `sdk_worker_main` exactly as a started process
# would. The client relays the worker's exit status, so Beam sees the same process contract.
#
# Fork safety: the zygote only imports modules; it creates no gRPC channel or model and runs no pipeline
# code before forking (the only threads are libraries' own, made at import and fork-aware: OpenBLAS's
# pool, jemalloc's background thread), so each worker starts from a clean state. If the zygote cannot be reached, the client runs the
# worker itself (the cold start). Linux only; `MMDATA_WORKER_ZYGOTE=0` turns it off.

_DIRECT_NAMES = {"directrunner", "direct", "switchingdirectrunner"}


def is_direct(runner: Any) -> bool:
    """Whether a `--runner` value (None: not given) is the local DirectRunner."""
    return runner is None or str(runner).lower() in _DIRECT_NAMES


ZYGOTE_FLAG = "--zygote"
VIA_FLAG = "--via"
ZYGOTE_ENV = "MMDATA_WORKER_ZYGOTE"
CONNECT_TIMEOUT_S = 10.0
_FORKED = b"F"  # zygote -> client: a worker was forked for this request


def _send(sock: Any, payload: dict) -> None:
    import json
    import struct

    data = json.dumps(payload).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _recv(sock: Any) -> dict:
    import json
    import struct

    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


def client_main(socket_path: str, args: list[str]) -> int:
    """What Beam runs for a worker when a zygote is up: hand this process's environment to it and wait
    for the forked worker's exit status. Runs the worker here (cold) if the zygote cannot be reached or
    closes the connection before forking."""
    import os
    import socket
    import time

    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    while True:
        try:
            sock.connect(socket_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:  # the zygote never came up: start cold
                sock.close()
                return _cold(args)
            time.sleep(0.005)
    try:
        _send(sock, {"env": dict(os.environ), "cwd": os.getcwd(), "args": args})
        # this process's stdout and stderr (what Beam gave the worker), for the forked worker
        socket.send_fds(sock, [b"1"], [1, 2])
        ack = sock.recv(1)
    except OSError:
        ack = b""
    if ack != _FORKED:  # the zygote went away before forking: nothing ran yet
        sock.close()
        return _cold(args)
    # The worker holds the other end; it sends its exit status just before it exits.
    status = b""
    try:
        status = sock.recv(1)
    except OSError:
        pass
    return status[0] if status else 1


def _cold(args: list[str]) -> int:
    sys.argv = [sys.argv[0], *args]
    main()
    return 0


def zygote_main(socket_path: str) -> None:
    """Listen on `socket_path`; import what the runner names on stdin's first line (JSON list); fork a
    worker per request. Exits when stdin closes (the runner is done or gone)."""
    import importlib
    import json
    import os
    import select
    import signal
    import socket

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the runner; stdin EOF stops us
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    install_stderr_handler()  # Beam's import-time chatter (apitools) dropped here too
    modules = json.loads(sys.stdin.readline() or "[]")
    for name in [BEAM_MODULE, *modules]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a worker imports what it needs itself and reports failures
            pass
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], 1.0)
        _reap()
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            _reap(wait_s=2.0)  # waited-for workers count in the runner's CPU time (os.times)
            os._exit(0)  # the runner is done: no interpreter teardown of everything imported
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        # a client that connects and then stalls must not block the other workers' start
        conn.settimeout(CONNECT_TIMEOUT_S)
        try:
            request = _recv(conn)
            _, fds, _, _ = socket.recv_fds(conn, 1, 2)
        except (OSError, EOFError, ValueError):
            conn.close()
            continue
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            listener.close()
            _forked_worker(conn, request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        conn.close()


def _reap(wait_s: float = 0.0) -> None:
    """Wait for exited workers (without blocking, or for up to `wait_s` for all of them)."""
    import os
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid == 0:  # some still running
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)


def _forked_worker(conn: Any, request: dict, stdio: list[int]) -> None:
    import os
    import signal
    import traceback

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(0)
        os.open(os.devnull, os.O_RDONLY)  # fd 0 again: the runner's pipe is not the worker's stdin
        for fd, target in zip(stdio, (1, 2), strict=True):  # the client's, as a started worker's
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        root = logging.getLogger()
        for handler in list(root.handlers):  # the zygote's; `main` installs the worker's own
            root.removeHandler(handler)
        for name in BENIGN_LOGGERS:
            for f in list(logging.getLogger(name).filters):
                logging.getLogger(name).removeFilter(f)
        conn.sendall(_FORKED)
        sys.argv = [BEAM_MODULE, *request["args"]]
        main(imported=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on stderr, as a crashed worker process would
        traceback.print_exc()
    finally:
        try:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
        try:
            conn.sendall(bytes([code & 0xFF]))
        except OSError:
            pass
        os._exit(code & 0xFF)


# What the zygote imports besides Beam's worker: the job modules, which import what their steps use
# (Beam, numpy, PIL, OpenCV, pyarrow; not torch). Not every mmdata module this process has imported:
# a benchmark or notebook may have imported `webdataset` (whose `__init__` imports torch, 1.2 s) or the
# trainer, which the workers never need, and the first bundle would wait for that import.
JOB_MODULES = ("pipelines.demo", "pipelines.ingest")


class WorkerZygote:
    """The process local multi_processing workers are forked from (see `mmdata.beam_worker`): it
    imports Beam's worker, `JOB_MODULES` and `preload`; a module a job needs beyond those is imported
    by each worker when it unpickles the job's steps, as a started worker does. It exits when this
    process closes its stdin (at exit, or when it dies)."""

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        import json
        import os
        import subprocess
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="mmdata-workers-")
        self.socket = os.path.join(self.folder, "zygote.sock")
        modules = sorted({*JOB_MODULES, *preload})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, ZYGOTE_FLAG, self.socket], stdin=subprocess.PIPE
        )
        self.proc.stdin.write((json.dumps(modules) + "\n").encode())
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        import shutil
        import subprocess

        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_ZYGOTE: WorkerZygote | None = None
_ZYGOTE_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def zygote_enabled() -> bool:
    import os

    flag = os.environ.get(ZYGOTE_ENV, "1").strip().lower()
    return sys.platform.startswith("linux") and flag not in ("0", "false", "no", "off")


def worker_zygote(preload: tuple[str, ...] = ()) -> WorkerZygote | None:
    """This process's worker zygote, started on first use (None where it is turned off), importing
    `JOB_MODULES` and `preload`. One serves every local multi_processing job of the process."""
    global _ZYGOTE
    if not zygote_enabled():
        return None
    global _ATEXIT_REGISTERED
    with _ZYGOTE_LOCK:
        if _ZYGOTE is None or not _ZYGOTE.alive():
            if not _ATEXIT_REGISTERED:
                import atexit

                atexit.register(close_zygote)
                _ATEXIT_REGISTERED = True
            _ZYGOTE = WorkerZygote(preload)
        return _ZYGOTE


def close_zygote() -> None:
    """Stop this process's worker zygote, if one is up (the next multi_processing job starts another)."""
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        if _ZYGOTE is not None:
            _ZYGOTE.close()
            _ZYGOTE = None


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == ZYGOTE_FLAG:
        zygote_main(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == VIA_FLAG:
        sys.exit(client_main(sys.argv[2], sys.argv[3:]))
    else:
        main()
