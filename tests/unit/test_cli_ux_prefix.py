"""Every subcommand prints a user's error the same way, as argparse and the shared handler of
`mmdata.cli.main` already did: `mmdata <subcommand>: error: <message>` (templates printed
`error: ...`, corpus `mmdata corpus: ...`, train's missing shards a bare line, and unrecognised
arguments `mmdata: error: ...`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmdata import cli
from mmdata.errors import print_error

ROOT = Path(__file__).resolve().parents[2]


def _lines(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if x.strip()]


def test_print_error_format(capsys) -> None:
    print_error("inspect", "something is wrong")
    print_error("train", FileNotFoundError(2, "No such file or directory", "x.yaml"))
    assert _lines(capsys) == [
        "mmdata inspect: error: something is wrong",
        "mmdata train: error: x.yaml: no such file or folder",
    ]


def test_corpus_errors(tmp_path: Path, capsys) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert cli.main(["corpus", "photos", "--out", str(f)]) == 2
    assert _lines(capsys) == [f"mmdata corpus: error: --out {f}: {f} is not a folder"]


def test_templates_errors(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    argv = ["templates", "validate", "--templates-dir", str(missing), "--no-embed"]
    assert cli.main(argv) == 2
    assert _lines(capsys) == [
        f"mmdata templates: error: templates folder {str(missing)!r} does not exist"
    ]
    assert not missing.exists()


def test_train_without_shards(tmp_path: Path, capsys) -> None:
    """Was `no shards: ...` alone (SystemExit, exit 1); a usage error like the others: exit 2."""
    assert cli.main(["train", "--output", str(tmp_path / "run")]) == 2
    assert _lines(capsys) == [
        "mmdata train: error: no shards: pass --shards or set data.shards in the config"
    ]


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["train", "--bogus"], "mmdata train"),
        (["weights", "list", "--runner=DirectRunner"], "mmdata weights list"),
        (["inspect", "x", "--bogus"], "mmdata inspect"),
    ],
)
def test_unrecognised_arguments_name_the_subcommand(argv, prog, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = _lines(capsys)
    assert err[-1].startswith(f"{prog}: error: unrecognized arguments"), err
    assert err[0].startswith(f"usage: {prog} "), err  # that subcommand's usage


# Ways of printing a user's error that bypass `print_error`.
_STRAY = re.compile(
    r"""print\(\s*f?["'](error: |mmdata [a-z]+: (?!error: ))|SystemExit\(\s*f?["']"""
)


def test_no_subcommand_prints_its_own_error_prefix() -> None:
    stray = []
    for path in [*(ROOT / "mmdata").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py")]:
        if "bench" in path.parts:  # the benchmark scripts are not subcommands
            continue
        for match in _STRAY.finditer(path.read_text()):
            stray.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not stray, stray
