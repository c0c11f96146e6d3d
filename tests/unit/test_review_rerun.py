"""Incremental reruns keep a shard only when its content would be identical (review findings 3, 14), the
output-inside-input check through symlinks (17) and validation before the output is made (22)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from mmdata.io.shards import META_CONTENT, ShardItem, WriteShards, prepare_output
from mmdata.runner import LocalDirectRunner


def _items(captions: dict[str, str], images: dict[str, bytes] | None = None) -> list[ShardItem]:
    images = images or {}
    return [
        ShardItem(
            sort_key=f"{k}-sort",
            members={"png": images.get(k, k.encode() * 40)},
            meta={"caption": c},
            row={"caption": c},
        )
        for k, c in captions.items()
    ]


def _write(out: Path, items: list[ShardItem], maxcount: int = 2) -> None:
    with TestPipeline(runner=LocalDirectRunner()) as p:
        p | beam.Create(items) | WriteShards(str(out), maxcount=maxcount)


def _stamp(out: Path) -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in sorted(out.iterdir())}


def _captions(out: Path, shard: str) -> list[str]:
    return pq.read_table(out / shard).column("caption").to_pylist()


CAPTIONS = {"a": "a banana", "b": "a camel", "c": "an amphora", "d": "a calendar"}


def test_unchanged_rerun_keeps_every_shard_byte_identical(tmp_path: Path) -> None:
    _write(tmp_path, _items(CAPTIONS))
    first = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    before = _stamp(tmp_path)
    _write(tmp_path, _items(CAPTIONS))
    assert _stamp(tmp_path) == before  # nothing rewritten
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == first
    meta = pq.read_schema(tmp_path / "00000.parquet").metadata
    assert len(meta[META_CONTENT]) == 64


def test_changed_caption_rewrites_only_its_shard(tmp_path: Path) -> None:
    _write(tmp_path, _items(CAPTIONS))
    before = _stamp(tmp_path)
    _write(tmp_path, _items({**CAPTIONS, "c": "an amphora (fixed caption)"}))
    after = _stamp(tmp_path)
    assert after["00000.tar"] == before["00000.tar"]  # a, b unchanged: kept
    assert after["00001.tar"] != before["00001.tar"]  # c changed: rewritten
    assert _captions(tmp_path, "00001.parquet") == ["an amphora (fixed caption)", "a calendar"]
    with tarfile.open(tmp_path / "00001.tar") as tar:
        jsons = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".json")]
    assert b"fixed caption" in jsons[0]


def test_replaced_image_rewrites_its_shard(tmp_path: Path) -> None:
    _write(tmp_path, _items(CAPTIONS))
    before = _stamp(tmp_path)
    _write(tmp_path, _items(CAPTIONS, images={"a": b"another image" * 10}))
    after = _stamp(tmp_path)
    assert after["00000.tar"] != before["00000.tar"]
    assert after["00001.tar"] == before["00001.tar"]
    assert b"another image" in (tmp_path / "00000.tar").read_bytes()


def test_rewritten_shard_equals_a_fresh_write(tmp_path: Path) -> None:
    changed = {**CAPTIONS, "b": "a two-humped camel"}
    _write(tmp_path / "rerun", _items(CAPTIONS))
    _write(tmp_path / "rerun", _items(changed))
    _write(tmp_path / "fresh", _items(changed))
    for name in ("00000.tar", "00000.parquet", "00001.tar", "00001.parquet"):
        assert (tmp_path / "rerun" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_shard_damaged_in_place_with_the_same_size_is_rewritten(tmp_path: Path) -> None:
    _write(tmp_path, _items(CAPTIONS))
    good = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(b"\0" * len(good))  # same size, all zeros
    before = _stamp(tmp_path)
    _write(tmp_path, _items(CAPTIONS))
    assert (tmp_path / "00000.tar").read_bytes() == good
    assert _stamp(tmp_path)["00001.tar"] == before["00001.tar"]


def test_sidecar_without_a_content_digest_rewrites_the_shard(tmp_path: Path) -> None:
    _write(tmp_path, _items(CAPTIONS))
    good = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    # an older sidecar: same rows, tar sha256 and size, but no content digest
    side = tmp_path / "00000.parquet"
    table = pq.read_table(side)
    meta = {k: v for k, v in table.schema.metadata.items() if k != META_CONTENT}
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(meta), buf, compression="zstd")
    side.write_bytes(buf.getvalue())
    before = _stamp(tmp_path)
    _write(tmp_path, _items(CAPTIONS))
    after = _stamp(tmp_path)
    assert after["00000.tar"] != before["00000.tar"]
    assert after["00001.tar"] == before["00001.tar"]
    assert side.read_bytes() == good["00000.parquet"]


def test_same_sort_keys_at_new_positions_are_rewritten(tmp_path: Path) -> None:
    """A sample added before a shard shifts the keys (`000000002` ...) of a later shard whose sort keys
    stay the same (shards cut by size): its tar changes, so it must be rewritten."""
    # in the tar: b and c 4608 bytes each (data + headers + json), a 2048: [b] [c], then [a b] [c]
    big = {"b": b"B" * 3000, "c": b"C" * 3000}
    base = {"b": "b", "c": "c"}
    with TestPipeline(runner=LocalDirectRunner()) as p:
        p | beam.Create(_items(base, big)) | WriteShards(str(tmp_path), maxcount=10, maxsize=7000)
    with TestPipeline(runner=LocalDirectRunner()) as p:
        (
            p
            | beam.Create(_items({"a": "a", **base}, {**big, "a": b"a"}))
            | WriteShards(str(tmp_path), maxcount=10, maxsize=7000)
        )
    keys = pq.read_table(tmp_path / "00001.parquet").column("key").to_pylist()
    assert pq.read_table(tmp_path / "00001.parquet").column("sort_key").to_pylist() == ["c-sort"]
    assert keys == ["000000002"]
    assert b"000000002.json" in (tmp_path / "00001.tar").read_bytes()


def test_output_inside_input_through_a_symlink_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    link = tmp_path / "data_link"
    link.symlink_to(data)
    with pytest.raises(ValueError, match="inside the input folder"):
        prepare_output(str(data / "shards"), str(link), "auto")
    with pytest.raises(ValueError, match="inside the input folder"):
        prepare_output(str(link / "shards"), str(data), "auto")
    with pytest.raises(ValueError, match="inside the input folder"):
        prepare_output(str(data / "shards"), str(link / "x.tar"), "auto")
    assert not (data / "shards").exists()
    prepare_output(str(tmp_path / "elsewhere"), str(link), "auto")  # outside: accepted
    assert (tmp_path / "elsewhere" / ".mmdata-dataset").is_file()


def test_refused_runs_create_no_output(tmp_path: Path) -> None:
    from mmdata.config import DemoConfig, IngestJobConfig
    from mmdata.core.templates import TemplateError
    from pipelines import demo, ingest

    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest.run(
            IngestJobConfig(input=str(tmp_path / "no_such_folder"), output=str(tmp_path / "o1"))
        )
    assert not (tmp_path / "o1").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        demo.run(DemoConfig(input=str(tmp_path / "no_such_folder"), output=str(tmp_path / "o2")))
    assert not (tmp_path / "o2").exists()
    src = tmp_path / "f"
    src.mkdir()
    (src / "a.png").write_bytes(b"x")
    cfg = DemoConfig(
        input=str(src), output=str(tmp_path / "o3"), templates_dir=str(tmp_path / "no_templates")
    )
    with pytest.raises(TemplateError, match="no template file"):
        demo.run(cfg)
    assert not (tmp_path / "o3").exists()
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_write_shards_schema_rows_still_work(tmp_path: Path) -> None:
    """The digest covers rows written through an explicit sidecar schema too."""
    schema = pa.schema(
        [
            ("key", pa.string()),
            ("shard", pa.string()),
            ("sort_key", pa.string()),
            ("caption", pa.string()),
        ]
    )
    for _ in range(2):
        with TestPipeline(runner=LocalDirectRunner()) as p:
            (
                p
                | beam.Create(_items(CAPTIONS))
                | WriteShards(str(tmp_path), maxcount=2, schema=schema)
            )
    assert _captions(tmp_path, "00000.parquet") == ["a banana", "a camel"]


def test_ingest_rerun_after_a_caption_edit_writes_the_new_caption(tmp_path: Path) -> None:
    from PIL import Image

    from mmdata.config import IngestJobConfig
    from pipelines import ingest

    src = tmp_path / "src"
    src.mkdir()
    for name, color in (("a", "yellow"), ("b", "brown")):
        Image.new("RGB", (16, 16), color).save(src / f"{name}.png")
        (src / f"{name}.txt").write_text(f"a {color} emoji")
    cfg = IngestJobConfig(input=str(src), output=str(tmp_path / "out"))
    ingest.run(cfg)
    (src / "a.txt").write_text("a ripe yellow banana (fixed caption)")
    Image.new("RGB", (16, 16), "red").save(src / "b.png")
    ingest.run(cfg)
    rows = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert [r["caption"] for r in rows] == ["a ripe yellow banana (fixed caption)", "a brown emoji"]
    assert b"fixed caption" in (tmp_path / "out" / "00000.tar").read_bytes()
    fresh = IngestJobConfig(input=str(src), output=str(tmp_path / "fresh"))
    ingest.run(fresh)
    assert (tmp_path / "out" / "00000.tar").read_bytes() == (
        tmp_path / "fresh" / "00000.tar"
    ).read_bytes()
