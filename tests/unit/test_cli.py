"""The `mmdata` command line: subcommands, Beam pass-through, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmdata.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "ingest", "inspect", "corpus", "weights", "templates", "train"):
        assert cmd in out


def test_no_arguments_prints_the_command_list(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    for cmd in ("demo", "ingest", "inspect", "train"):
        assert f"    {cmd} " in err


def test_every_job_flag_says_what_it_does():
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for job in ("demo", "ingest"):
        for action in sub.choices[job]._actions:
            if action.option_strings and action.dest != "help":
                text = action.help or ""
                assert text and not text.startswith("default:"), (job, action.option_strings)


def test_beam_options_pass_through_only_for_jobs():
    args, rest = build_parser().parse_known_args(
        ["demo", "--seed", "3", "--runner=DirectRunner", "--direct_num_workers=2"]
    )
    assert args.accepts_beam_args and rest == ["--runner=DirectRunner", "--direct_num_workers=2"]
    with pytest.raises(SystemExit):
        main(["weights", "list", "--runner=DirectRunner"])  # not a job: no Beam options


def test_clear_errors_not_tracebacks(tmp_path):
    cmd = [sys.executable, "-m", "mmdata.cli"]
    res = subprocess.run(
        cmd + ["demo", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(cmd + ["demo", "--shards.maxcount", "0"], capture_output=True, text=True)
    assert res.returncode == 2 and "maxcount must be > 0" in res.stderr
    res = subprocess.run(cmd + ["inspect", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "no manifest.json" in res.stderr


def test_runner_options():
    from apache_beam.options.pipeline_options import StandardOptions

    from mmdata.runner import pipeline_options

    assert pipeline_options([]).view_as(StandardOptions).runner == "DirectRunner"
    assert pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with pytest.raises(ValueError, match="multi_processing"):
        pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])


def test_local_worker_processes_log_beam_at_warning_unless_told():
    from apache_beam.options.pipeline_options import WorkerOptions

    from mmdata.runner import WORKER_LOG_OVERRIDES, pipeline_options

    mp = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert (
        pipeline_options(mp).view_as(WorkerOptions).sdk_harness_log_level_overrides
        == WORKER_LOG_OVERRIDES
    )
    # the user's own levels win; in-process runs and other runners are left alone
    told = pipeline_options([*mp, "--default_sdk_harness_log_level=DEBUG"]).view_as(WorkerOptions)
    assert told.sdk_harness_log_level_overrides is None
    assert told.default_sdk_harness_log_level == "DEBUG"
    told = pipeline_options([*mp, '--sdk_harness_log_level_overrides={"mmdata": "DEBUG"}'])
    assert told.view_as(WorkerOptions).sdk_harness_log_level_overrides == {"mmdata": "DEBUG"}
    assert pipeline_options([]).view_as(WorkerOptions).sdk_harness_log_level_overrides is None


def test_job_options_keep_one_view_per_class_and_share_values():
    """mmdata's options cache `view_as` (Beam re-parses every flag per call); views still share values."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from mmdata.runner import pipeline_options

    opts = pipeline_options(["--direct_num_workers=2", "--runner=DirectRunner"])
    std = opts.view_as(StandardOptions)
    assert opts.view_as(StandardOptions) is std and std.runner == "DirectRunner"
    assert opts.view_as(DirectOptions).direct_num_workers == 2
    std.streaming = True
    assert opts.get_all_options()["streaming"] is True
    assert opts.view_as(DirectOptions).view_as(StandardOptions).streaming is True


def test_secret_options_are_redacted_for_logs():
    from mmdata.runner import redact_args

    args = [
        "--s3_secret_access_key=abc",
        "--s3_access_key_id",
        "AKIA123",
        "--aws-session-token=tok",
        "--runner=DirectRunner",
        "--direct_num_workers",
        "2",
        "--api_key",
        "--dry_run",
    ]
    assert redact_args(args) == [
        "--s3_secret_access_key=***",
        "--s3_access_key_id",
        "***",
        "--aws-session-token=***",
        "--runner=DirectRunner",
        "--direct_num_workers",
        "2",
        "--api_key",  # a flag without a value: nothing to hide, and the next option is kept
        "--dry_run",
    ]
    assert redact_args(None) == []
