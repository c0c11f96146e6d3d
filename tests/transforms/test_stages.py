"""Stage transforms in TestPipeline with assert_that, and metrics through MetricsFilter."""

from __future__ import annotations

import io
import json
import tarfile

import apache_beam as beam
import imagegen
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to, is_not_empty

from mmdata.config import IngestConfig, QualityConfig
from mmdata.core.reasons import Reason
from mmdata.io.readers import ReadFolder, ReadManifest, ReadWebDataset
from mmdata.io.shards import ShardItem, WriteShards
from mmdata.records import RawRecord
from mmdata.runner import LocalDirectRunner
from mmdata.transforms.ingest import Ingest
from mmdata.transforms.quality import QualityFilter
from mmdata.transforms.stage import CountStages


def _raw(key, data, caption="a caption", source=None):
    return RawRecord(key=key, source=source or f"mem://{key}", image=data, caption=caption)


def test_ingest_splits_kept_and_rejects_with_metrics():
    good = imagegen.encode(imagegen.photo("coffee", 64))
    records = [
        _raw("a", good),
        _raw("b", b""),
        _raw("c", good, caption=b"\xff\xfe"),
        _raw("a", imagegen.encode(imagegen.photo("rocket", 64)), source="mem://z"),  # duplicate key
    ]
    p = TestPipeline(runner=LocalDirectRunner())
    out = p | beam.Create(records) | Ingest(IngestConfig())
    assert_that(
        out["kept"] | "K" >> beam.Map(lambda r: (r.key, r.mode, r.width)),
        equal_to([("a", "RGB", 64)]),
        label="kept",
    )
    assert_that(
        out["rejects"] | "R" >> beam.Map(lambda r: (r.key, r.stage, r.reason)),
        equal_to(
            [
                ("b", "ingest", "empty_file"),
                ("c", "ingest", "caption_not_utf8"),
                ("a", "unique_keys", "duplicate_key"),
            ]
        ),
        label="rejects",
    )
    assert_that(
        out["counts"] | CountStages(),
        equal_to(
            [
                (
                    "ingest",
                    {"input": 4, "kept": 2, "rejected": {"caption_not_utf8": 1, "empty_file": 1}},
                ),
                ("unique_keys", {"input": 2, "kept": 1, "rejected": {"duplicate_key": 1}}),
            ]
        ),
        label="counts",
    )
    result = p.run()
    result.wait_until_finish()
    kept = result.metrics().query(MetricsFilter().with_namespace("ingest").with_name("kept"))[
        "counters"
    ]
    assert sum(c.committed for c in kept) == 2
    rej = result.metrics().query(
        MetricsFilter().with_namespace("ingest").with_name("rejected_empty_file")
    )
    assert sum(c.committed for c in rej["counters"]) == 1


def test_quality_filter_counts():
    from mmdata.transforms.ingest import raw_to_pair

    pairs = [
        raw_to_pair(_raw(f"k{i}", imagegen.encode(img)), IngestConfig())
        for i, img in enumerate(
            [imagegen.photo("astronaut", 96), imagegen.shape(3), imagegen.photo("coffee", 16)]
        )
    ]
    with TestPipeline(runner=LocalDirectRunner()) as p:
        out = p | beam.Create(pairs) | QualityFilter(QualityConfig())
        assert_that(out["kept"] | beam.Map(lambda r: r.key), equal_to(["k0", "k1"]), label="kept")
        assert_that(
            out["rejects"] | beam.Map(lambda r: r.reason), equal_to(["too_small"]), label="rej"
        )
        assert_that(
            out["kept"] | "q" >> beam.Map(lambda r: sorted(r.metadata["quality"])), is_not_empty()
        )
        assert_that(
            out["counts"] | CountStages(),
            equal_to([("quality", {"input": 3, "kept": 2, "rejected": {"too_small": 1}})]),
            label="counts",
        )


def test_read_folder(tmp_path):
    keys = imagegen.good_folder(tmp_path, n_shapes=3)
    (tmp_path / "README.md").write_text("ignored")
    with TestPipeline(runner=LocalDirectRunner()) as p:
        recs = p | ReadFolder(str(tmp_path))
        assert_that(
            recs | beam.Map(lambda r: (r.key, r.error is None, r.image is not None)),
            equal_to([(k, True, True) for k in keys]),
        )
        assert_that(
            recs | "meta" >> beam.Map(lambda r: r.metadata.get("style")) | beam.Filter(bool),
            equal_to(["set0", "set1", "set2"]),
            label="meta",
        )


def test_read_folder_caption_sidecar_precedence(tmp_path):
    """With a .json and a .txt for one image, the JSON caption wins (the .txt only fills in for a JSON
    without one), and the record says which was used."""
    for stem in ("both", "json_no_caption", "txt_only"):
        imagegen.photo("coffee", 40).save(tmp_path / f"{stem}.png")
    (tmp_path / "both.json").write_text(json.dumps({"caption": "from json", "style": "x"}))
    (tmp_path / "both.txt").write_text("from txt")
    (tmp_path / "json_no_caption.json").write_text(json.dumps({"style": "y"}))
    (tmp_path / "json_no_caption.txt").write_text("txt fills in")
    (tmp_path / "txt_only.txt").write_text("only txt")
    with TestPipeline(runner=LocalDirectRunner()) as p:
        recs = p | ReadFolder(str(tmp_path))
        assert_that(
            recs
            | beam.Map(
                lambda r: (
                    r.key,
                    r.caption.decode() if isinstance(r.caption, bytes) else r.caption,
                    r.metadata.get("caption_sidecar"),
                )
            ),
            equal_to(
                [
                    ("both", "from json", "json"),
                    ("json_no_caption", "txt fills in", "txt"),
                    ("txt_only", "only txt", None),
                ]
            ),
        )


def test_read_manifest_formats(tmp_path):
    import pyarrow as pa

    imagegen.photo("coffee").save(tmp_path / "c.png")
    rows = [
        {"path": "c.png", "caption": "coffee", "url": "http://x/c.png"},
        {"path": "missing.png", "caption": "gone"},
        {"caption": "no path"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    (tmp_path / "m.csv").write_text('path,caption\nc.png,"coffee, with\nnewline"\n')
    for name, expected in [
        ("m.parquet", [None, "missing_file", "missing_path"]),
        ("m.jsonl", [None, "missing_file", "missing_path", "bad_manifest_row"]),
        ("m.csv", [None]),
    ]:
        with TestPipeline(runner=LocalDirectRunner()) as p:
            recs = p | ReadManifest(str(tmp_path / name))
            assert_that(
                recs | beam.Map(lambda r: r.error[0] if r.error else None), equal_to(expected)
            )


def test_read_webdataset_with_unsafe_and_failed(tmp_path):
    import pyarrow as pa

    jpg = imagegen.encode(imagegen.photo("coffee"), "JPEG")
    imagegen.img2dataset_tar(
        tmp_path / "00000.tar",
        [("000000000", jpg, "coffee"), ("000000001", jpg, "more")],
        extra=[("../evil.txt", b"x"), ("/abs.jpg", jpg)],
    )
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "key": "000000000",
                    "url": "u0",
                    "status": "success",
                    "error_message": None,
                    "caption": "coffee",
                },
                {
                    "key": "000000002",
                    "url": "u2",
                    "status": "failed_to_download",
                    "error_message": "404",
                    "caption": "x",
                },
            ]
        ),
        tmp_path / "00000.parquet",
    )
    whole = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(whole[: len(whole) // 3])  # truncated tar
    with TestPipeline(runner=LocalDirectRunner()) as p:
        recs = p | ReadWebDataset(str(tmp_path / "*.tar"))
        assert_that(
            recs
            | beam.Map(lambda r: (r.key, r.error[0] if r.error else None))
            | beam.Filter(lambda t: t[1]),
            equal_to(
                [
                    ("evil", "unsafe_tar_member"),
                    ("abs", "unsafe_tar_member"),
                    ("000000002", "download_failed"),
                    ("000000001", "corrupt_tar"),
                    ("00001_tar", "corrupt_tar"),
                ]
            ),
        )


def test_read_webdataset_tar_cut_anywhere(tmp_path):
    """A tar cut off at any byte: samples complete before the damage are kept, the one being read is a
    reject, and the tar itself is one; tarfile alone would end quietly at a cut inside a header or on a
    member boundary (no end-of-archive block), losing what followed without a word."""
    import tarfile

    jpg = imagegen.encode(imagegen.photo("coffee", 40), "JPEG")
    imagegen.img2dataset_tar(
        tmp_path / "whole.tar",
        [("000000000", jpg, "first"), ("000000001", jpg, "second")],
        extra=[("../evil.jpg", jpg)],
    )
    whole = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as t:
        at = {m.name: m.offset for m in t.getmembers()}
    cuts = {
        "in_unsafe_data": at["../evil.jpg"] + 700,  # both samples complete, then the unsafe member
        "in_json_header": at["000000001.json"] + 100,  # sample 1 lacks its .json
        "on_boundary": at["000000001.json"],  # same, cut exactly between members
        "before_unsafe": at["../evil.jpg"],  # nothing marks the end: sample 1 is suspect
    }
    (tmp_path / "whole.tar").unlink()
    for name, cut in cuts.items():
        (tmp_path / f"{name}.tar").write_bytes(whole[:cut])
    with TestPipeline(runner=LocalDirectRunner()) as p:
        recs = p | ReadWebDataset(str(tmp_path / "*.tar"))
        assert_that(
            recs
            | beam.Map(
                lambda r, root=str(tmp_path) + "/": (
                    r.source.removeprefix(root),
                    r.error[0] if r.error else "kept",
                )
            ),
            equal_to(
                [
                    ("in_unsafe_data.tar::000000000", "kept"),
                    ("in_unsafe_data.tar::000000001", "kept"),
                    ("in_unsafe_data.tar::../evil.jpg", "unsafe_tar_member"),
                    ("in_unsafe_data.tar", "corrupt_tar"),
                ]
                + [
                    row
                    for name in ("in_json_header", "on_boundary", "before_unsafe")
                    for row in (
                        (f"{name}.tar::000000000", "kept"),
                        (f"{name}.tar::000000001", "corrupt_tar"),
                        (f"{name}.tar", "corrupt_tar"),
                    )
                ]
            ),
        )


def _items(n):
    return [
        ShardItem(
            sort_key=f"{i * 7919 % 1000:04d}x",
            members={"target.png": bytes([i]) * (50 + i)},
            meta={"i": i},
            row={"i": i},
        )
        for i in range(n)
    ]


def test_write_shards_deterministic_and_readable(tmp_path):
    for run in ("a", "b"):
        with TestPipeline(runner=LocalDirectRunner()) as p:
            infos = p | beam.Create(_items(23)) | WriteShards(str(tmp_path / run), maxcount=10)
            assert_that(
                infos | beam.Map(lambda s: (s.name, s.samples)),
                equal_to([("00000.tar", 10), ("00001.tar", 10), ("00002.tar", 3)]),
            )
    for name in ("00000.tar", "00001.tar", "00002.tar", "00000.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    samples = list(wds.WebDataset(str(tmp_path / "a" / "{00000..00002}.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(23)]
    order = sorted(_items(23), key=lambda it: it.sort_key)
    for s, it in zip(samples, order, strict=True):
        assert s["target.png"] == it.members["target.png"]
        assert json.loads(s["json"]) == {"key": s["__key__"], **it.meta}
    with tarfile.open(tmp_path / "a" / "00000.tar") as tar:
        names = tar.getnames()
        assert names == sorted(names) and all(m.mtime == 946684800 for m in tar.getmembers())
    rows = pq.read_table(tmp_path / "a" / "00001.parquet").to_pylist()
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(10, 20)]
    assert not list((tmp_path / "a").glob("*.tmp-*"))


def test_write_shards_plans_across_many_key_prefixes(tmp_path):
    """Keys spread over every plan group (hex hashes): the shards are cut as one sorted list."""
    from mmdata.core.keys import stable_hash
    from mmdata.io.shards import plan_shards

    items = [
        ShardItem(stable_hash("i", str(i)), {"target.png": bytes([i % 256]) * (10 + i % 37)})
        for i in range(700)
    ]
    with TestPipeline(runner=LocalDirectRunner()) as p:
        infos = p | beam.Create(items) | WriteShards(str(tmp_path), maxcount=64, maxsize=9000)
        assert_that(
            infos | beam.Map(lambda s: s.samples),
            equal_to(
                [c for _, _, c in plan_shards([(it.sort_key, it.nbytes) for it in items], 64, 9000)]
            ),
        )
    tars = [str(t) for t in sorted(tmp_path.glob("*.tar"))]
    keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
    assert sorted(keys) == [f"{i:09d}" for i in range(700)]


def test_write_shards_maxsize(tmp_path):
    """maxsize bounds a shard's tar bytes: members with their 512-byte headers and padding (the
    archive's end-of-file blocks aside), which for small samples is most of their size."""
    items = _items(12)
    assert {it.nbytes for it in items} == {2048}  # a 50-61 byte png and a short json: 4 blocks
    maxsize = 3 * 2048 + 100
    with TestPipeline(runner=LocalDirectRunner()) as p:
        infos = p | beam.Create(items) | WriteShards(str(tmp_path), maxcount=100, maxsize=maxsize)
        assert_that(infos | beam.Map(lambda s: s.samples), equal_to([3, 3, 3, 3]))
    for t in tmp_path.glob("*.tar"):
        with tarfile.open(t) as tar:
            entries = sum(512 + -(-m.size // 512) * 512 for m in tar.getmembers())
            assert entries == 3 * 2048 <= maxsize
        assert t.stat().st_size <= maxsize + 10240  # the end blocks and padding to a tar record


def test_write_shards_skips_complete(tmp_path):
    def run():
        with TestPipeline(runner=LocalDirectRunner()) as p:
            p | beam.Create(_items(15)) | WriteShards(str(tmp_path), maxcount=10)

    run()
    first = {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    (tmp_path / "00001.parquet").unlink()  # as if killed between the two renames
    run()
    after = {f.name: f.stat().st_mtime_ns for f in tmp_path.iterdir()}
    assert after["00000.tar"] == first["00000.tar"]  # complete: skipped
    assert after["00001.tar"] != first["00001.tar"]  # incomplete: rewritten
    assert (tmp_path / "00001.parquet").exists()


def test_tar_bytes_independent_of_input_order(tmp_path):
    import random

    items = _items(9)
    random.Random(1).shuffle(items)
    with TestPipeline(runner=LocalDirectRunner()) as p:
        p | beam.Create(items) | WriteShards(str(tmp_path / "x"), maxcount=100)
    with TestPipeline(runner=LocalDirectRunner()) as p:
        p | beam.Create(_items(9)) | WriteShards(str(tmp_path / "y"), maxcount=100)
    assert (tmp_path / "x" / "00000.tar").read_bytes() == (
        tmp_path / "y" / "00000.tar"
    ).read_bytes()
    buf = io.BytesIO((tmp_path / "x" / "00000.tar").read_bytes())
    assert tarfile.open(fileobj=buf).getnames()[0] == "000000000.json"


def test_stage_tallies_are_per_thread_when_one_dofn_runs_bundles_on_several_threads():
    """Dask's threaded scheduler gives every partition the same DoFn instance: a bundle that starts
    while another is half done must not reset or take the other's tallies."""
    import threading

    from mmdata.transforms.stage import Tally, _StageFn

    fn = _StageFn("s", lambda x: x if x % 3 else Reason("three", ""))
    fn.setup()
    results: list[list] = []
    a_half, b_started = threading.Event(), threading.Event()

    def run(items: range, steps: list) -> None:
        fn.start_bundle()
        for x in items[:50]:
            list(fn.process(x))
        for signal, wait in steps:
            signal and signal.set()
            wait and wait.wait(5)
        for x in items[50:]:
            list(fn.process(x))
        results.append([t.value for t in fn.finish_bundle()])

    a = threading.Thread(target=run, args=(range(0, 100), [(a_half, b_started)]))
    b = threading.Thread(target=run, args=(range(100, 200), [(b_started, None)]))
    a.start()
    a_half.wait(5)
    b.start()
    a.join()
    b.join()
    totals = []
    for tallies in results:
        assert all(isinstance(t, Tally) and t.stage == "s" for t in tallies)
        totals.append({t.tag: t.n for t in tallies})
    assert sorted(sum(t.values()) for t in totals) == [200, 200]  # input + kept + rejected, each
    assert sum(t["input"] for t in totals) == 200
    assert sum(t["kept"] for t in totals) == 133 and sum(t["rej:three"] for t in totals) == 67


def test_manifest_refuses_counts_that_do_not_match_the_shards(tmp_path):
    """Tallies that never arrived (every stage 0) or a last stage that kept other than the shards hold."""
    from mmdata.io.shards import ShardInfo
    from mmdata.transforms.manifest import AccountingError, _FinalizeFn

    fin = _FinalizeFn(str(tmp_path), "ingest", {}, ["ingest", "unique_keys"], {}, [])
    shard = ShardInfo("00000.tar", "00000.parquet", 3, 100, "0" * 64)
    with pytest.raises(AccountingError, match="kept 0 records but the shards hold 3"):
        list(fin.process(None, [], [shard], {}, {}, [("pair", 3)]))
    counts = [(("ingest", "input"), 3), (("ingest", "kept"), 3)]
    counts += [(("unique_keys", "input"), 3), (("unique_keys", "kept"), 3)]
    (manifest,) = list(fin.process(None, counts, [shard], {}, {}, [("pair", 3)]))
    assert manifest["totals"]["samples"] == 3
