"""The shard writer's per-item shortcuts give the same shards as the long way: the plan's first keys
listed once per plan (not per item), member hashes the producer already has, and local writes by
`open` + `os.replace` (no temporary file left behind when a write fails)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mmdata.core.keys import stable_hash
from mmdata.io import paths
from mmdata.io.shards import ShardItem, _AssignFn, content_digest, plan_shards, shard_for
from mmdata.records import ImageTextPair
from mmdata.transforms.instructions import pair_to_item
from tests.imagegen import encode, shape


def test_assign_lists_the_plans_first_keys_once_and_agrees_with_shard_for() -> None:
    sizes = [(stable_hash("k", str(i)), 100) for i in range(500)]
    plan = plan_shards(sizes, maxcount=7, maxsize=10**9)
    fn = _AssignFn()
    for key, _ in sizes:
        item = ShardItem(sort_key=key, members={"txt": b"x"})
        [(idx, got)] = list(fn.process(item, plan))
        assert got is item
        assert idx == shard_for(key, plan)
        first, start, count = plan[idx]
        assert first <= key and (idx + 1 == len(plan) or key < plan[idx + 1][0])
    # the cached first keys belong to this plan object: a new plan (another job, same worker) is
    # not answered from the old one's list
    cached = fn._firsts
    other = plan_shards(sizes, maxcount=50, maxsize=10**9)
    key = sizes[-1][0]
    [(idx, _)] = list(fn.process(ShardItem(sort_key=key, members={}), other))
    assert idx == shard_for(key, other) and fn._firsts is not cached


def _pair(img: bytes, caption: str = "a red square") -> ImageTextPair:
    return ImageTextPair(
        key="k1",
        image=img,
        format="png",
        caption=caption,
        source="a/k1.png",
        url=None,
        width=64,
        height=64,
        sha256=hashlib.sha256(img).hexdigest(),
        mode="RGB",
        metadata={},
    )


def test_a_pairs_known_image_hash_gives_the_digest_hashing_would() -> None:
    img = encode(shape(1))
    item = pair_to_item(_pair(img))
    assert item.digests == {"png": hashlib.sha256(img).hexdigest()}
    rehashed = ShardItem(item.sort_key, item.members, item.meta, item.row)  # no digests
    assert content_digest([("000000000", item)], "00000.tar") == content_digest(
        [("000000000", rehashed)], "00000.tar"
    )
    # members without a known hash (the caption) are hashed: a changed caption changes the digest
    other = pair_to_item(_pair(img, caption="a blue square"))
    assert content_digest([("000000000", other)], "00000.tar") != content_digest(
        [("000000000", item)], "00000.tar"
    )


def test_local_write_bytes_makes_folders_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "00000.tar"
    paths.write_bytes(str(target), b"first")
    paths.write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["00000.tar"]


def test_a_failed_local_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "00000.tar"
    target.write_bytes(b"old")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paths.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        paths.write_bytes(str(target), b"new")
    assert sorted(os.listdir(tmp_path)) == ["00000.tar"]
    assert target.read_bytes() == b"old"


def _items(n: int) -> list[ShardItem]:
    return [
        ShardItem(
            sort_key=stable_hash("t", str(i)),
            members={"png": encode(shape(i)), "txt": f"shape {i}".encode()},
            meta={"caption": f"shape {i}"},
            row={"caption": f"shape {i}"},
        )
        for i in range(n)
    ]


def test_streamed_shards_are_the_encoded_tars_with_their_recorded_hash(tmp_path: Path) -> None:
    """The writer streams each tar to disk, hashing on the way: the file is exactly `encode_tar`'s
    bytes, and the sidecar and ShardInfo record its real sha256 and size."""
    import apache_beam as beam
    import pyarrow.parquet as pq
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from mmdata.core.keys import shard_key
    from mmdata.io.shards import META_BYTES, META_SHA, WriteShards, encode_tar
    from mmdata.runner import LocalDirectRunner

    items = _items(7)
    ordered = sorted(items, key=lambda it: it.sort_key)
    chunks = [[(shard_key(i), ordered[i]) for i in range(s, min(7, s + 3))] for s in (0, 3, 6)]
    tars = [encode_tar(c) for c in chunks]
    expected = [
        (f"0000{s}.tar", hashlib.sha256(t).hexdigest(), len(t), len(c))
        for s, (t, c) in enumerate(zip(tars, chunks, strict=True))
    ]
    with TestPipeline(runner=LocalDirectRunner()) as p:
        out = p | beam.Create(items) | WriteShards(str(tmp_path), maxcount=3)
        got = out | beam.Map(lambda i: (i.name, i.sha256, i.bytes, i.samples))
        assert_that(got, equal_to(expected))
    assert sorted(os.listdir(tmp_path)) == [
        f"0000{i}.{ext}" for i in range(3) for ext in ("parquet", "tar")
    ]
    for s, tar in enumerate(tars):
        assert (tmp_path / f"0000{s}.tar").read_bytes() == tar
        meta = pq.read_schema(tmp_path / f"0000{s}.parquet").metadata
        assert meta[META_SHA].decode() == hashlib.sha256(tar).hexdigest()
        assert int(meta[META_BYTES]) == len(tar)


def test_a_shard_that_fails_while_streaming_leaves_nothing_visible(tmp_path: Path) -> None:
    """A sample that cannot be written (a member name with a slash) fails the job mid-tar: neither the
    tar nor its temporary file nor a sidecar is left in the output."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from mmdata.io.shards import WriteShards
    from mmdata.runner import LocalDirectRunner

    items = _items(4)
    last = max(items, key=lambda it: it.sort_key)  # written last: the tar is half streamed
    last.members["a/b"] = b"x"
    with pytest.raises(Exception, match="bad member field"):
        with TestPipeline(runner=LocalDirectRunner()) as p:
            p | beam.Create(items) | WriteShards(str(tmp_path), maxcount=10)
    assert os.listdir(tmp_path) == []
