"""Local multi_processing workers forked from the warm zygote (mmdata.beam_worker): they really are its
children and run the job as cold-started workers do; the zygote goes away with its runner; the thin
client relays the worker's exit status and falls back to a cold start when the zygote is unreachable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from mmdata import beam_worker
from mmdata.cli import _multi_processing_local
from mmdata.runner import LocalDirectRunner, pipeline_options

MP = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the zygote is Linux only"
)


def _run_job(n: int) -> None:
    """A 2-worker job over n elements whose workers check their own parent (MMDATA_TEST_ZYGOTE_PID)
    and see the runner's environment (MMDATA_TEST_MARK); the results must be the right ones."""
    opts = pipeline_options(MP)
    with beam.Pipeline(runner=LocalDirectRunner(), options=opts) as p:
        out = (
            p
            | beam.Create(range(n))
            | beam.Reshuffle()
            | beam.Map(lambda x: (os.getppid(), x * x, os.environ.get("MMDATA_TEST_MARK", "")))
        )
        assert_that(out | beam.Map(lambda t: t[1]), equal_to([x * x for x in range(n)]))
        assert_that(out | beam.Map(lambda t: t[2]), equal_to(["x"] * n), label="env")
        parents = out | "Parents" >> beam.Map(lambda t: t[0]) | beam.Distinct()
        assert_that(parents | beam.combiners.ToList(), _parents_are_the_zygote, label="ppid")


def _parents_are_the_zygote(lists: list) -> None:
    (parents,) = lists
    assert set(parents) == {int(os.environ["MMDATA_TEST_ZYGOTE_PID"])}, parents


def test_workers_are_forked_from_the_zygote_and_see_the_runner_env(monkeypatch):
    beam_worker.close_zygote()
    zygote = beam_worker.worker_zygote()
    assert zygote is not None and zygote.alive()
    monkeypatch.setenv("MMDATA_TEST_MARK", "x")  # after the zygote's start: its workers see it
    monkeypatch.setenv("MMDATA_TEST_ZYGOTE_PID", str(zygote.proc.pid))
    _run_job(40)
    assert beam_worker.worker_zygote() is zygote  # one zygote serves the process's jobs
    _run_job(8)
    beam_worker.close_zygote()
    assert zygote.proc.poll() == 0 and not os.path.exists(zygote.folder)


def test_zygote_off_starts_workers_cold(monkeypatch):
    beam_worker.close_zygote()
    monkeypatch.setenv(beam_worker.ZYGOTE_ENV, "0")
    assert beam_worker.worker_zygote() is None
    monkeypatch.setenv("MMDATA_TEST_MARK", "x")
    monkeypatch.setenv("MMDATA_TEST_ZYGOTE_PID", "-1")  # no worker's parent can be that
    with pytest.raises(Exception, match="ppid"):
        _run_job(4)


def test_zygote_exits_when_its_runner_dies(tmp_path):
    code = (
        "import os, sys; from mmdata import beam_worker; z = beam_worker.worker_zygote(); "
        "print(z.proc.pid, flush=True); os._exit(0)"  # no atexit: as if the runner were killed
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{pid}/stat") as f:  # an exited, not yet reaped zygote is gone too
            if f.read().split()[2] == "Z":
                return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the zygote outlived its runner")


def _serve_once(path: str, reply: bytes) -> threading.Thread:
    """A stand-in zygote that injects a fault: reads one request, sends `reply`, closes."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        conn, _ = srv.accept()
        request = beam_worker._recv(conn)
        _, fds, _, _ = socket.recv_fds(conn, 1, 2)
        assert len(fds) == 2  # the client's stdout and stderr
        for fd in fds:
            os.close(fd)
        assert request["env"]["MMDATA_TEST_MARK"] == "y" and request["args"] == ["--a"]
        conn.sendall(reply)
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_client_relays_status_and_falls_back_to_a_cold_start(tmp_path, monkeypatch):
    cold: list = []
    monkeypatch.setattr(beam_worker, "_cold", lambda args: cold.append(args) or 7)
    monkeypatch.setattr(beam_worker, "CONNECT_TIMEOUT_S", 0.1)
    monkeypatch.setenv("MMDATA_TEST_MARK", "y")
    # forked, and the worker exits with status 3
    t = _serve_once(str(tmp_path / "a.sock"), beam_worker._FORKED + bytes([3]))
    assert beam_worker.client_main(str(tmp_path / "a.sock"), ["--a"]) == 3 and not cold
    t.join(5)
    # forked, then the worker died without a status (a crash): a failure, not a second worker
    t = _serve_once(str(tmp_path / "b.sock"), beam_worker._FORKED)
    assert beam_worker.client_main(str(tmp_path / "b.sock"), ["--a"]) == 1 and not cold
    t.join(5)
    # the zygote went away before forking: nothing ran, so the worker starts cold here
    t = _serve_once(str(tmp_path / "c.sock"), b"")
    assert beam_worker.client_main(str(tmp_path / "c.sock"), ["--a"]) == 7
    t.join(5)
    # no zygote at all
    assert beam_worker.client_main(str(tmp_path / "none.sock"), ["--b"]) == 7
    assert cold == [["--a"], ["--b"]]


def test_cli_starts_the_zygote_only_for_local_multi_processing():
    assert _multi_processing_local(["demo", "--direct_running_mode=multi_processing"])
    assert _multi_processing_local(["ingest", "--direct_running_mode", "multi_processing"])
    assert _multi_processing_local(["demo", *MP, "--runner=DirectRunner"])
    assert not _multi_processing_local(["demo", "--direct_running_mode=in_memory"])
    assert not _multi_processing_local(["demo", *MP, "--runner", "DataflowRunner"])
    assert not _multi_processing_local(["demo"])


def _say(x: int) -> int:
    print(f"worker-says-{x}", file=sys.stderr, flush=True)
    return x


def test_forked_workers_write_to_the_runners_stderr_of_now(tmp_path):
    """The zygote's stderr is the runner's at the zygote's start; a worker writes where the runner's
    stderr points when the job runs (as a started worker would), e.g. a log file opened later."""
    beam_worker.close_zygote()
    assert beam_worker.worker_zygote() is not None  # inherits the current fd 2
    log = tmp_path / "stderr.txt"
    saved = os.dup(2)
    try:
        with open(log, "wb") as f:
            os.dup2(f.fileno(), 2)
        with beam.Pipeline(runner=LocalDirectRunner(), options=pipeline_options(MP)) as p:
            _ = p | beam.Create([1, 2, 3]) | beam.Reshuffle() | beam.Map(_say)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        beam_worker.close_zygote()
    text = log.read_text()
    assert all(f"worker-says-{x}" in text for x in (1, 2, 3)), text[-2000:]


def test_zygote_imports_only_what_workers_need():
    """A process that has imported webdataset (so torch) or the trainer does not make the zygote import
    them: the first bundle waited 1.2 s for torch's import in bench-ingest."""
    import webdataset  # noqa: F401 - its __init__ imports torch here

    beam_worker.close_zygote()
    zygote = beam_worker.worker_zygote()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until it waits for requests (imports done)
            with open(f"/proc/{zygote.proc.pid}/wchan") as f:
                if f.read().startswith(("poll_schedule", "do_select", "do_sys_poll")):
                    break
            time.sleep(0.05)
        with open(f"/proc/{zygote.proc.pid}/maps") as f:
            maps = f.read()
        assert "cv2" in maps  # the job modules' own imports are there
        assert "libtorch" not in maps
    finally:
        beam_worker.close_zygote()
