"""A --runner that cannot run here (its Beam extra, Java or job server jar missing) is one line naming
the runner, what is missing and how to get it, before the job touches its output; nothing is started
or downloaded to find out."""

from __future__ import annotations

import sys
import types

import apache_beam as beam
import pytest
from apache_beam.runners.runner import PipelineRunner
from apache_beam.utils import subprocess_server

from mmdata import cli
from mmdata.errors import RunnerUnavailableError
from mmdata.runner import check_runner, pipeline_options, run_pipeline, runner_problem

APICLIENT = "apache_beam.runners.dataflow.internal.apiclient"


@pytest.fixture
def no_gcp(monkeypatch):  # noqa: ANN001, ANN201
    """Beam's Dataflow client unimportable, as without apache-beam[gcp] (also where it is installed)."""
    import apache_beam.runners.dataflow.internal as internal

    monkeypatch.setitem(sys.modules, APICLIENT, None)
    monkeypatch.delattr(internal, "apiclient", raising=False)
    return monkeypatch


@pytest.fixture
def nothing_starts(monkeypatch):  # noqa: ANN001, ANN201
    """Any attempt to download a jar or start a job server fails the test at once (no hang)."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a jar download or a job server start was attempted")

    monkeypatch.setattr(subprocess_server.JavaJarServer, "_download_jar_to_cache", refuse)
    monkeypatch.setattr(subprocess_server.JavaJarServer, "local_jar", refuse)
    monkeypatch.setattr(subprocess_server.SubprocessServer, "start", refuse)
    return monkeypatch


@pytest.fixture
def no_java(tmp_path, nothing_starts):  # noqa: ANN001, ANN201
    empty = tmp_path / "bin"
    empty.mkdir()
    nothing_starts.setenv("PATH", str(empty))
    nothing_starts.delenv("JAVA_HOME", raising=False)
    return nothing_starts


def _fake_java(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    bin_dir = tmp_path / "javabin"
    bin_dir.mkdir()
    java = bin_dir / "java"
    java.write_text("#!/bin/sh\nexit 1\n")
    java.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def test_dataflow_without_gcp_extra_names_the_install(no_gcp) -> None:
    for runner in ["DataflowRunner", "dataflow", "apache_beam.runners.dataflow.DataflowRunner"]:
        problem = runner_problem(pipeline_options([f"--runner={runner}"]))
        assert problem and f"--runner={runner}" in problem
        assert "uv pip install 'apache-beam[gcp]==" in problem and "\n" not in problem
    with pytest.raises(RunnerUnavailableError, match="apache-beam\\[gcp\\]"):
        check_runner(["--runner=DataflowRunner", "--project=p-123456"])


def test_flink_without_java_or_jar_fails_fast_without_downloading(tmp_path, no_java) -> None:
    args = ["--runner=FlinkRunner", f"--jar_cache_dir={tmp_path / 'jars'}"]
    problem = runner_problem(pipeline_options(args))
    assert problem and problem.startswith("--runner=FlinkRunner cannot start here")
    assert "no 'java' on PATH" in problem and "Java 11+" in problem
    assert "job server jar is not here" in problem and "--flink_job_server_jar" in problem
    assert str(tmp_path / "jars") in problem  # where to put the jar
    assert "--job_endpoint" in problem and "\n" not in problem
    with pytest.raises(RunnerUnavailableError, match="FlinkRunner"):
        run_pipeline(lambda p: p | beam.Create([1]), args)
    assert not (tmp_path / "jars").exists()  # nothing was fetched


def test_spark_and_portable_runner_problems(tmp_path, no_java) -> None:
    problem = runner_problem(
        pipeline_options(["--runner=SparkRunner", f"--jar_cache_dir={tmp_path}"])
    )
    assert problem and "--runner=SparkRunner" in problem and "java" in problem
    assert "--spark_job_server_jar" in problem
    problem = runner_problem(pipeline_options(["--runner=PortableRunner"]))
    assert problem and "--job_endpoint=HOST:PORT" in problem
    assert (
        runner_problem(pipeline_options(["--runner=PortableRunner", "--job_endpoint=h:1"])) is None
    )


def test_flink_with_java_and_a_jar_is_accepted(tmp_path, nothing_starts) -> None:
    _fake_java(tmp_path, nothing_starts)
    jar = tmp_path / "flink-job-server.jar"
    jar.write_bytes(b"PK")
    base = ["--runner=FlinkRunner"]
    assert runner_problem(pipeline_options([*base, f"--flink_job_server_jar={jar}"])) is None
    missing = runner_problem(pipeline_options([*base, f"--flink_job_server_jar={tmp_path}/x.jar"]))
    assert missing and "x.jar does not exist" in missing and "no 'java'" not in missing
    # the default jar, already in Beam's jar cache
    cache = tmp_path / "cache"
    problem = runner_problem(pipeline_options([*base, f"--jar_cache_dir={cache}"]))
    assert problem and "job server jar is not here" in problem and "no 'java'" not in problem
    name = problem.split(f"at {cache}/", 1)[1].split(",", 1)[0]
    cache.mkdir()
    (cache / name).write_bytes(b"PK")
    assert runner_problem(pipeline_options([*base, f"--jar_cache_dir={cache}"])) is None
    # a job server that already runs needs neither
    assert runner_problem(pipeline_options([*base, "--job_endpoint=localhost:8099"])) is None


def test_local_runners_have_no_problem() -> None:
    assert runner_problem(pipeline_options([])) is None
    assert runner_problem(pipeline_options(["--runner=DirectRunner"])) is None


def test_cli_reports_one_line_exit_1_and_leaves_no_output(tmp_path, capsys, no_gcp) -> None:
    out = tmp_path / "out"
    args = ["--runner=DataflowRunner", "--project=p-123456", "--region=us-central1"]
    assert cli.main(["demo", "--output", str(out), *args]) == 1
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert lines == [lines[0]] and lines[0].startswith(
        "mmdata demo: error: --runner=DataflowRunner"
    )
    assert "apache-beam[gcp]" in lines[0] and "Traceback" not in err
    assert not out.exists()  # refused before the output folder (and its marker) was made


def test_cli_flink_without_java_exit_1(tmp_path, capsys, no_java) -> None:
    from mmdata.sample import sample_corpus_dir

    out = tmp_path / "out"
    argv = ["ingest", "--input", str(sample_corpus_dir()), "--output", str(out)]
    assert cli.main([*argv, "--runner=FlinkRunner", f"--jar_cache_dir={tmp_path}/j"]) == 1
    err = capsys.readouterr().err
    assert "mmdata ingest: error: --runner=FlinkRunner cannot start here" in err
    assert "Traceback" not in err and not out.exists()


class _NeedsAMissingModule(PipelineRunner):
    def run_pipeline(self, pipeline, options):  # noqa: ANN001, ANN201
        import mmdata_no_such_runner_dependency  # noqa: F401


def test_import_errors_of_a_runner_become_one_line(monkeypatch) -> None:
    module = types.ModuleType("mmdata_fake_runner")
    module.NeedsAMissingModule = _NeedsAMissingModule
    monkeypatch.setitem(sys.modules, "mmdata_fake_runner", module)
    build = lambda p: p | beam.Create([1])  # noqa: E731
    # when the runner runs (DataflowRunner without [gcp] raises here)
    with pytest.raises(RunnerUnavailableError, match="mmdata_no_such_runner_dependency") as err:
        run_pipeline(build, ["--runner=mmdata_fake_runner.NeedsAMissingModule"])
    assert "--runner=mmdata_fake_runner.NeedsAMissingModule is not available here" in str(err.value)
    # when Beam creates it from its name
    with pytest.raises(RunnerUnavailableError, match="mmdata_no_such_module"):
        run_pipeline(build, ["--runner=mmdata_no_such_module.SomeRunner"])
