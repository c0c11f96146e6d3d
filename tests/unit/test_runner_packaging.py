"""A remote runner without a way to give its workers mmdata is warned about before the job starts."""

from __future__ import annotations

import pytest

from mmdata.runner import packaging_problem, pipeline_options


@pytest.mark.parametrize(
    "args",
    [
        ["--runner=DataflowRunner", "--project=p", "--region=r"],
        ["--runner=apache_beam.runners.dataflow.dataflow_runner.DataflowRunner"],
        ["--runner=FlinkRunner", "--flink_master=host:8081"],
        ["--runner=PortableRunner", "--job_endpoint=host:8099"],
    ],
)
def test_remote_runner_without_packaging_is_named(args):
    problem = packaging_problem(pipeline_options(args))
    assert problem and "make dist" in problem and "--sdk_container_image" in problem


@pytest.mark.parametrize(
    "args",
    [
        [],  # DirectRunner
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        ["--runner=DataflowRunner", "--sdk_container_image=europe-docker.pkg.dev/p/r/mmdata:1"],
        ["--runner=DataflowRunner", "--extra_package=dist/mmdata-0.1.0-py3-none-any.whl"],
        ["--runner=DataflowRunner", "--requirements_file=dist/requirements.txt"],
        ["--runner=FlinkRunner", "--setup_file=./setup.py"],
        ["--runner=PortableRunner", "--environment_type=LOOPBACK"],
    ],
)
def test_local_or_packaged_runs_are_not_warned(args):
    assert packaging_problem(pipeline_options(args)) is None
