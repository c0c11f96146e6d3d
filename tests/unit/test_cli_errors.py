"""The command line reports users' errors in one line (OSError, ValueError, mmdata's runtime errors) and
keeps the traceback for anything else (a bug)."""

from __future__ import annotations

import importlib

import pytest

from mmdata import cli


def test_output_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub"
    from mmdata.sample import sample_corpus_dir

    code = cli.main(["ingest", "--input", str(sample_corpus_dir()), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "mmdata ingest: error:" in err
    assert f"a parent, {tmp_path / 'afile'}, is a file, not a folder" in err and "Errno" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("module", "name"), sorted(cli.RUNTIME_USER_ERRORS))
def test_runtime_user_errors_name_real_classes(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, Exception)
    assert cli._user_error_code(cls.__new__(cls)) == 1


def test_codes():
    from mmdata.io.sourcebytes import SourceChangedError
    from mmdata.weights import WeightsMissingError

    assert cli._user_error_code(PermissionError(13, "Permission denied")) == 2
    assert cli._user_error_code(ValueError("bad")) == 2
    assert cli._user_error_code(WeightsMissingError("no file")) == 2  # also a FileNotFoundError
    assert cli._user_error_code(SourceChangedError("changed")) == 1
    assert cli._user_error_code(RuntimeError("a bug")) is None
    assert cli._user_error_code(KeyError("a bug")) is None


def test_a_job_that_keeps_nothing_says_so(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"not a png")  # a reject (no caption, not an image)
    assert cli.main(["ingest", "--input", str(src), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "warning: the dataset is empty" in out and "rejects.parquet" in out


@pytest.mark.parametrize(
    ("flag", "hint"),
    [
        ("--shard.maxcount", "(--shard.maxcount: did you mean --shards.maxcount?)"),
        ("--shards-maxsize=5", "(--shards-maxsize: did you mean --shards.maxsize?)"),
        ("--quality.min_side", "(--quality.min_side is an option of `mmdata demo`)"),
        ("--no_such_thing", ""),
    ],
)
def test_unknown_flag_names_the_one_meant(tmp_path, capsys, flag, hint):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["ingest", "--input", str(tmp_path), "--output", str(tmp_path / "o"), flag, "1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and last.startswith("mmdata ingest: error: unrecognized arguments")
    assert hint in last and ("did you mean" in last or "an option of" in last) == bool(hint)
