"""OSErrors on the command line are one line that names the path and says what is wrong in words
(was the raw `[Errno 17] File exists: 'afile'`), with the exit code the subcommand already used (2)."""

from __future__ import annotations

import errno
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from apache_beam.io.filesystem import BeamIOError

from mmdata import cli
from mmdata.errors import (
    check_output_folder,
    describe_os_error,
    folder_problem,
    os_error_reason,
    parent_folder_problem,
)


def _raised(action) -> OSError:
    with pytest.raises(OSError) as e:
        action()
    return e.value


def _one_line(capsys, command: str) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"mmdata {command}: error: "), err
    assert "Errno" not in err[0] and "Traceback" not in err[0]
    return err[0]


# -- the helper -------------------------------------------------------------------------------------


def test_makedirs_under_a_file_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    exists = _raised(lambda: os.makedirs(f))  # [Errno 17] File exists
    assert describe_os_error(exists) == f"{f}: it is a file, not a folder"
    below = _raised(lambda: os.makedirs(f / "sub" / "deeper"))  # [Errno 20] Not a directory
    assert describe_os_error(below) == f"{f / 'sub'}: a parent, {f}, is a file, not a folder"
    opened = _raised(lambda: open(f / "x.html", "w"))
    assert describe_os_error(opened) == f"{f / 'x.html'}: a parent, {f}, is a file, not a folder"


def test_plain_words_instead_of_errno_texts(tmp_path: Path) -> None:
    missing = _raised(lambda: open(tmp_path / "nope" / "x"))
    assert describe_os_error(missing) == f"{tmp_path / 'nope' / 'x'}: no such file or folder"
    denied = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/x.json")
    assert describe_os_error(denied) == "/data/x.json: permission denied"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # no file named: the words alone
    assert describe_os_error(full) == "no space left on the disk"
    moved = _raised(lambda: os.rename(tmp_path / "a.tmp", tmp_path / "a"))
    assert (
        describe_os_error(moved)
        == f"{tmp_path / 'a.tmp'} -> {tmp_path / 'a'}: no such file or folder"
    )
    folder = _raised(lambda: open(tmp_path, "w"))
    assert describe_os_error(folder) == f"{tmp_path}: is a folder, not a file"
    assert os_error_reason(denied) == "permission denied"


def test_own_messages_and_beam_errors() -> None:
    own = FileNotFoundError("out has no manifest.json: not an mmdata dataset")
    assert describe_os_error(own) == "out has no manifest.json: not an mmdata dataset"
    inner = PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/b/x")
    wrapped = BeamIOError("Rename operation failed", {("/b/x.tmp", "/b/x"): inner})
    assert describe_os_error(wrapped) == "/b/x: permission denied"


def test_folder_checks(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    assert folder_problem(tmp_path / "new" / "sub") is None
    assert folder_problem(f) == "it is a file, not a folder"
    assert folder_problem(f / "sub") == f"a parent, {f}, is a file, not a folder"
    assert parent_folder_problem(f) is None  # a file may be written (replaced) there
    assert parent_folder_problem(f / "x.html") == f"a parent, {f}, is a file, not a folder"
    assert folder_problem("s3://bucket/out") is None
    with pytest.raises(NotADirectoryError, match=f"output folder {f / 'run'}: a parent, {f}, is"):
        check_output_folder(f / "run")


# -- the subcommands --------------------------------------------------------------------------------


def _empty_dataset(root: Path) -> Path:
    root.mkdir()
    manifest = {
        "job": "demo",
        "mmdata_version": "0",
        "counts": {},
        "shards": [],
        "tasks": {},
        "mixture": {},
        "totals": {"samples": 0, "rejects": 0},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_inspect_out_under_a_file(tmp_path: Path, capsys) -> None:
    ds = _empty_dataset(tmp_path / "ds")
    f = tmp_path / "afile"
    f.write_text("x")
    for out in (f / "x.html", f / "sub" / "x.html"):
        assert cli.main(["inspect", str(ds), "--out", str(out)]) == 2
        line = _one_line(capsys, "inspect")
        assert line.endswith(f"report {out}: a parent, {f}, is a file, not a folder"), line
    assert f.read_text() == "x"


def test_sample_output_under_a_file(tmp_path: Path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    argv = ["sample", "--checkpoint", str(tmp_path / "run"), "--instruction", str(tmp_path / "i")]
    assert cli.main([*argv, "--output", str(f / "png")]) == 2  # before the checkpoint is read
    line = _one_line(capsys, "sample")
    assert line.endswith(f"output folder {f / 'png'}: a parent, {f}, is a file, not a folder")


def _shard_dataset(root: Path) -> Path:
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("0.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    (root / "00000.tar").write_bytes(buf.getvalue())
    manifest = {"shards": [{"name": "00000.tar", "samples": 1}], "tasks": {"txt2img": 1}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_train_output_under_a_file(tmp_path: Path, capsys) -> None:
    ds = _shard_dataset(tmp_path / "ds")
    f = tmp_path / "afile"
    f.write_text("x")
    assert cli.main(["train", "--shards", str(ds), "--output", str(f / "run")]) == 2
    line = _one_line(capsys, "train")
    assert line.endswith(f"output folder {f / 'run'}: a parent, {f}, is a file, not a folder")
    assert cli.main(["train", "--shards", str(ds), "--output", str(f)]) == 2
    assert _one_line(capsys, "train").endswith(f"output folder {f}: it is a file, not a folder")
