"""A rerun that stops after changing some shards leaves no manifest.json describing the files that were
there before it: the previous manifest is withdrawn before the first change, and the next complete run
writes one that matches the files again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import imagegen
import pytest

from mmdata.config import IngestJobConfig, ShardConfig
from mmdata.io import shards
from pipelines import ingest


def _corpus(root: Path, n: int = 12) -> Path:
    root.mkdir()
    for i in range(n):
        (root / f"{i:02d}.png").write_bytes(imagegen.encode(imagegen.photo("coffee", 32 + i)))
        (root / f"{i:02d}.txt").write_text(f"photo number {i}")
    return root


def _run(src: Path, out: Path, maxcount: int) -> None:
    ingest.run(
        IngestJobConfig(input=str(src), output=str(out), shards=ShardConfig(maxcount=maxcount))
    )


def _check_manifest(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    for s in m["shards"]:
        data = (out / s["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == sorted(s["name"] for s in m["shards"])
    return m


def test_rerun_stopped_midway_leaves_no_stale_manifest(tmp_path, monkeypatch):
    src, out = _corpus(tmp_path / "src"), tmp_path / "out"
    _run(src, out, maxcount=4)
    assert len(_check_manifest(out)["shards"]) == 3
    # the rerun with another plan fails while it writes its second sidecar (a full disk, a kill)
    real, calls = shards._write_atomic, []

    def failing(path: str, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(shards, "_write_atomic", failing)
    with pytest.raises(Exception, match="No space left"):
        _run(src, out, maxcount=5)
    monkeypatch.setattr(shards, "_write_atomic", real)
    assert not (out / "manifest.json").exists()  # the old one listed 3 shards of 4 samples
    assert (out / shards.OUTPUT_MARKER).exists()  # still an mmdata dataset: the rerun may go on
    _run(src, out, maxcount=5)
    m = _check_manifest(out)
    assert [s["samples"] for s in m["shards"]] == [5, 5, 2]


def test_identical_rerun_keeps_shards_and_rewrites_the_manifest(tmp_path):
    src, out = _corpus(tmp_path / "src"), tmp_path / "out"
    _run(src, out, maxcount=4)
    before = (out / "manifest.json").read_bytes()
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    _run(src, out, maxcount=4)
    assert (out / "manifest.json").read_bytes() == before
    assert {
        p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")
    } == tars  # skipped, not rewritten


def test_output_reached_through_a_linked_input_folder_is_not_read(tmp_path, caplog):
    """A folder input whose symlinked subfolder leads to the folder holding the output: the reader
    follows the link but never lists the output, so a rerun does not read its own dataset back."""
    src, ext = _corpus(tmp_path / "src", n=4), _corpus(tmp_path / "ext", n=3)
    (src / "linked").symlink_to(ext)
    out = ext / "out"  # not inside the input's own tree, so the output checks let it be
    _run(src, out, maxcount=100)
    first = (out / "manifest.json").read_bytes()
    _run(src, out, maxcount=100)
    m = _check_manifest(out)
    assert m["totals"] == {"samples": 7, "rejects": 0}  # 4 + 3 images, no shard read as input
    assert (out / "manifest.json").read_bytes() == first
    assert "it is the job's output folder" in caplog.text
