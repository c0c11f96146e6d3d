"""`mmdata inspect`: a broken manifest.json is named with what is wrong (was `Expecting value: line 1
column 1 (char 1)` or a KeyError traceback), and its options take dashes like the other subcommands'
(`--max-samples`), the underscore spelling kept."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmdata import cli
from mmdata.inspect import ManifestError, write_report
from mmdata.io.shards import ShardItem, encode_tar


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


def _manifest(shards: list[dict]) -> dict:
    return {
        "job": "demo",
        "mmdata_version": "0",
        "stages": ["ingest"],
        "counts": {"ingest": {"input": 3, "kept": 3, "rejected": {}}},
        "shards": shards,
        "tasks": {"txt2img": 3},
        "mixture": {"txt2img": 1.0},
        "totals": {"samples": 3, "rejects": 0},
    }


def _dataset(root: Path, n: int = 3) -> Path:
    root.mkdir()
    samples = [
        (f"{i:09d}", ShardItem(f"k{i}", {"png": _png()}, meta={"caption": f"cap {i}"}))
        for i in range(n)
    ]
    tar = encode_tar(samples)
    (root / "00000.tar").write_bytes(tar)
    shard = {"name": "00000.tar", "samples": n, "bytes": len(tar)}
    (root / "manifest.json").write_text(json.dumps(_manifest([shard]), indent=2))
    return root


def _error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("mmdata inspect: error: "), err
    return err[0].removeprefix("mmdata inspect: error: ")


def test_manifest_that_is_not_json_names_file_line_and_column(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    (ds / "manifest.json").write_text('{\n  "job": "demo",\n  "shards": [,]\n}\n')
    message = _error(capsys, ["inspect", str(ds)])
    assert message == f"{ds}/manifest.json is not valid JSON: Expecting value at line 3 column 14"
    (ds / "manifest.json").write_bytes(b'{"job": "\xff"}')
    assert "manifest.json is not UTF-8 text" in _error(capsys, ["inspect", str(ds)])


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (lambda m: [m], "the top level is a list, not an object"),
        (lambda m: {k: v for k, v in m.items() if k != "shards"}, "shards is missing"),
        (lambda m: {**m, "shards": {"name": "x"}}, "shards is an object, not a list"),
        (lambda m: {**m, "shards": [{"bytes": 3}]}, "shards[0].name is missing"),
        (lambda m: {**m, "shards": ["00000.tar"]}, "shards[0] is a string, not an object"),
        (lambda m: {**m, "totals": {"samples": 3}}, "totals.rejects is missing"),
        (lambda m: {**m, "counts": {"ingest": {"input": 3, "kept": 3}}}, "counts.ingest.rejected"),
        (lambda m: {**m, "job": None}, "job is null, not a string"),
        (lambda m: {**m, "mixture": [1.0]}, "mixture is a list, not an object"),
        (lambda m: {**m, "stages": "ingest"}, "stages is a string, not a list"),
    ],
)
def test_manifest_of_the_wrong_shape_names_file_and_field(
    tmp_path: Path, capsys, change, what: str
) -> None:
    ds = _dataset(tmp_path / "ds")
    path = ds / "manifest.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    message = _error(capsys, ["inspect", str(ds)])
    assert message.startswith(f"{path} is not an mmdata manifest: {what}"), message
    with pytest.raises(ManifestError):  # a ValueError, not a KeyError or TypeError
        write_report(ds)
    assert not (ds / "inspect.html").exists()


@pytest.mark.parametrize("flag", ["--max-samples", "--max_samples"])
def test_max_samples_takes_both_spellings(tmp_path: Path, capsys, flag: str) -> None:
    ds = _dataset(tmp_path / "ds")
    out = tmp_path / "r.html"
    assert cli.main(["inspect", str(ds), flag, "2", "--out", str(out)]) == 0
    assert out.read_text().count("class='s'") == 2


def test_help_documents_the_dashed_spelling(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["inspect", "--help"])
    out = capsys.readouterr().out
    assert "--max-samples MAX_SAMPLES" in out and "--max_samples works as well" in out
