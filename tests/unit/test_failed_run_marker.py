"""A failed run (a remote runner's job that failed, or was never accepted) does not leave a
`.mmdata-dataset` marker claiming the output folder as a dataset when it wrote nothing there; a run
that wrote files keeps it (a rerun replaces them), and a marker from an earlier run is never removed."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from apache_beam.runners.runner import PipelineRunner

from mmdata import cli
from mmdata.io.shards import OUTPUT_MARKER, claimed_output
from mmdata.sample import sample_corpus_dir

RUNNER = "--runner=mmdata_fake_remote.FailingRunner"


class _Failing(PipelineRunner):
    """Stands in for a remote runner whose job fails (e.g. its workers cannot import mmdata);
    `writes` files into the output first when a test sets it."""

    writes: Path | None = None

    def run_pipeline(self, pipeline, options):  # noqa: ANN001, ANN201
        if _Failing.writes is not None:
            (_Failing.writes / "00000.tar").write_bytes(b"partial")
        raise RuntimeError("Dataflow job 2026-12-02_01 failed: workers could not import mmdata")


@pytest.fixture
def failing_runner(monkeypatch):  # noqa: ANN001, ANN201
    module = types.ModuleType("mmdata_fake_remote")
    module.FailingRunner = _Failing
    monkeypatch.setitem(sys.modules, "mmdata_fake_remote", module)
    monkeypatch.setattr(_Failing, "writes", None)
    return _Failing


def _ingest(out: Path, capsys) -> str:  # noqa: ANN001
    argv = ["ingest", "--input", str(sample_corpus_dir()), "--output", str(out), RUNNER]
    with pytest.raises(RuntimeError, match="job .* failed"):
        cli.main(argv)
    return capsys.readouterr().err


def test_a_failed_run_into_a_new_folder_leaves_nothing(tmp_path, capsys, failing_runner) -> None:
    out = tmp_path / "out"
    _ingest(out, capsys)
    assert not out.exists()
    with pytest.raises(RuntimeError, match="job .* failed"):
        cli.main(["demo", "--output", str(out), RUNNER])
    assert not out.exists()


def test_a_failed_run_into_an_empty_folder_removes_only_its_marker(
    tmp_path, capsys, failing_runner
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _ingest(out, capsys)
    assert out.is_dir() and list(out.iterdir()) == []


def test_an_earlier_datasets_marker_is_kept(tmp_path, capsys, failing_runner) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("an earlier run's\n")
    _ingest(out, capsys)
    assert (out / OUTPUT_MARKER).read_text() == "an earlier run's\n"


def test_a_failed_run_that_wrote_files_keeps_its_marker_for_the_rerun(
    tmp_path, capsys, failing_runner
) -> None:
    out = tmp_path / "out"
    failing_runner.writes = out
    _ingest(out, capsys)
    assert (out / OUTPUT_MARKER).is_file() and (out / "00000.tar").is_file()
    # the rerun (local runner) accepts the folder and writes the dataset
    assert cli.main(["ingest", "--input", str(sample_corpus_dir()), "--output", str(out)]) == 0
    assert (out / "manifest.json").is_file()


def test_claimed_output_keeps_the_marker_of_a_successful_run(tmp_path) -> None:
    out = tmp_path / "out"
    with claimed_output(str(out)):
        pass
    assert (out / OUTPUT_MARKER).is_file()
    with pytest.raises(KeyboardInterrupt), claimed_output(str(tmp_path / "other")):
        raise KeyboardInterrupt
    assert not (tmp_path / "other").exists()
