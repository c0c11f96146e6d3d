"""Ingest inputs a review found mishandled: keys of dotted and non-ASCII names, glob characters in
paths, documentation-like image names, case-twin extensions, hidden folders, BOMs, non-text captions,
missing inputs."""

from __future__ import annotations

import json
from pathlib import Path

import imagegen
import pyarrow.parquet as pq
import pytest

from mmdata.config import IngestJobConfig
from mmdata.core.keys import slug, slug_key
from pipelines import ingest


def _png(i: int = 0) -> bytes:
    return imagegen.encode(imagegen.shape(i))


def _run(inp: str, out: Path) -> tuple[dict, list[dict], list[dict]]:
    ingest.run(IngestJobConfig(input=inp, output=str(out)))
    m = json.loads((out / "manifest.json").read_text())
    for stage, c in m["counts"].items():
        assert c["input"] == c["kept"] + sum(c["rejected"].values()), stage
    rows = [r for s in m["shards"] for r in pq.read_table(out / s["parquet"]).to_pylist()]
    return m, rows, pq.read_table(out / "rejects.parquet").to_pylist()


def test_slugs_keep_distinct_names_distinct():
    assert slug("clip.0001") == "clip_0001" != slug("clip.0002")
    assert slug_key("frames/clip.0001.png") == "frames_clip_0001"
    assert len({slug("猫"), slug("犬"), slug("鳥"), slug("_")}) == 4
    assert slug("été") != slug("t") and "." not in slug("été")
    assert slug_key("emoji/noto/1f680.png") == "emoji_noto_1f680"  # ASCII keys as before


def test_folder_names_that_lost_records(tmp_path):
    src = tmp_path / "photos [2024]"  # glob characters in the folder name
    (src / ".thumbnails").mkdir(parents=True)
    names = [
        "clip.0001",
        "clip.0002",
        "猫",
        "犬",
        "license_plate_01",
        "readme_cover",
        "attribution_map",
    ]
    for i, n in enumerate(names):
        (src / f"{n}.png").write_bytes(_png(i))
        (src / f"{n}.txt").write_text(f"picture {i}")
    (src / "dup.png").write_bytes(_png(8))
    (src / "dup.PNG").write_bytes(_png(9))
    (src / "dup.txt").write_text("two files, one stem")
    (src / "bom.png").write_bytes(_png(10))
    (src / "bom.json").write_bytes(b'\xef\xbb\xbf{"caption": "a caption with a BOM"}')
    (src / "README.md").write_text("docs, not data")
    (src / ".thumbnails" / "clip.png").write_bytes(_png(0))
    (src / ".thumbnails" / "clip.txt").write_text("a thumbnail cache")
    m, rows, rejects = _run(str(src), tmp_path / "out")
    assert rejects == []
    got = sorted(Path(r["source"]).name for r in rows)
    want = sorted([f"{n}.png" for n in names] + ["dup.png", "dup.PNG", "bom.png"])
    assert got == want
    assert len({r["pair_key"] for r in rows}) == len(rows)
    assert m["counts"]["ingest"]["input"] == len(want)


def test_manifest_keys_and_captions(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    rows = []
    for i, key in enumerate(["v1.0", "v1.1", "photo.2023.001"]):
        (d / f"{i}.png").write_bytes(_png(i))
        rows.append({"key": key, "path": f"{i}.png", "caption": f"picture {i}"})
    for i, cap in enumerate([["a", "b"], {"en": "x"}, True], start=3):
        (d / f"{i}.png").write_bytes(_png(i))
        rows.append({"path": f"{i}.png", "caption": cap})
    (d / "m.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + '\n{"path": "0.png", "caption": NaN}'
    )
    m, kept, rejects = _run(str(d / "m.jsonl"), tmp_path / "out")
    assert sorted(r["pair_key"] for r in kept) == ["photo_2023_001", "v1_0", "v1_1"]
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == ["caption_missing"] + ["caption_not_text"] * 3


def test_missing_inputs_are_clear_errors(tmp_path):
    for inp in (tmp_path / "captions.csv", tmp_path / "nowhere" / "00000.tar"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            ingest.run(IngestJobConfig(input=str(inp), output=str(tmp_path / "out")))
    with pytest.raises(FileNotFoundError, match="no files match"):
        ingest.run(
            IngestJobConfig(input=str(tmp_path / "data/*.parquet"), output=str(tmp_path / "o"))
        )
    assert not (tmp_path / "out").exists()
