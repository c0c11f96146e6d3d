"""Text that is not clean Unicode, and typed manifest columns, met on web data: each is read or is a
recorded reject, never a failed job (lone surrogates in JSON manifests, non-UTF-8 file names in
folders and tars, nanosecond timestamps, CSV cells that look like numbers)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import imagegen
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from mmdata.config import IngestJobConfig
from mmdata.core.jsonvalues import json_safe, printable, valid_text
from mmdata.core.keys import slug
from pipelines import ingest


def _run(inp: Path | str, out: Path) -> tuple[dict, list[dict], list[dict]]:
    """Run ingest; (manifest, rejects, samples' json) with the accounting checked."""
    ingest.run(IngestJobConfig(input=str(inp), output=str(out)))
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for stage, c in m["counts"].items():
        assert c["input"] == c["kept"] + sum(c["rejected"].values()), stage
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(rejects) == m["totals"]["rejects"]
    samples = []
    for shard in sorted(out.glob("*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False):
            # strict UTF-8: a lone surrogate written as a JSON escape would fail here
            samples.append(json.loads(s["json"].decode("utf-8")))
            json.dumps(samples[-1], ensure_ascii=False).encode("utf-8")
        pq.read_table(shard.with_suffix(".parquet"))  # sidecar rows are valid UTF-8 too
    assert len(samples) == m["totals"]["samples"]
    return m, rejects, samples


def test_text_helpers():
    assert valid_text("fine ok") == "fine ok"
    assert valid_text("cut \ud83d emoji") == "cut \ufffd emoji"
    assert valid_text("\ud83d\ude00") == "\U0001f600"  # a pair written as two code points
    assert printable("caf\udce9.png") == "caf\\xe9.png"  # a latin-1 file name's byte
    assert printable("a\ud83d") == "a\\ud83d"
    assert printable("été") == "été"
    assert json_safe({"k\udc00": ["v\ud800", 1]}) == {"k\ufffd": ["v\ufffd", 1]}
    assert slug("caf\udce9") != slug("café")  # distinct names keep distinct keys
    assert slug("caf\udce9") == slug("caf\udce9")


def test_json_manifest_with_lone_surrogates(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "i0.png").write_bytes(imagegen.encode(imagegen.photo("coffee")))
    (src / "i1.png").write_bytes(imagegen.encode(imagegen.photo("rocket")))
    # JSON escapes as a crawler writes them: half an emoji cut off, in a caption and in metadata
    (src / "m.jsonl").write_text(
        '{"path": "i0.png", "caption": "a cup of coffee \\ud83d", "title": "x \\udc00 y"}\n'
        '{"path": "i1.png", "caption": "\\ud83d", "title": "ok"}\n'
        '{"path": "\\ud83d.png", "caption": "a missing image"}\n',
        encoding="ascii",
    )
    m, rejects, samples = _run(src / "m.jsonl", tmp_path / "out")
    assert [(s["caption"], s["metadata"]["title"]) for s in samples] == [
        ("a cup of coffee", "x \ufffd y")
    ]
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == ["caption_empty", "missing_file"]
    missing = next(r for r in rejects if r["reason"] == "missing_file")
    assert "\\ud83d.png" in missing["detail"]


def test_non_utf8_file_names_in_a_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    png = imagegen.encode(imagegen.photo("coffee"))
    raw = os.fsencode(str(src))
    for name, caption in ((b"caf\xe9", b"a latin-1 named photo"), (b"plain", b"a plain name")):
        with open(raw + b"/" + name + b".png", "wb") as f:
            f.write(png)
        with open(raw + b"/" + name + b".txt", "wb") as f:
            f.write(caption)
    with open(raw + b"/orphan\xff.txt", "wb") as f:  # a sidecar without its image
        f.write(b"lonely")
    out = tmp_path / "out"
    m, rejects, samples = _run(src, out)
    assert sorted(s["caption"] for s in samples) == ["a latin-1 named photo", "a plain name"]
    latin = next(s for s in samples if s["caption"].startswith("a latin"))
    assert latin["source"] == "caf\\xe9.png"
    assert [(r["reason"], r["source"]) for r in rejects] == [("orphan_sidecar", "orphan\\xff.txt")]
    # the same shards on a rerun into a new folder
    m2, _, _ = _run(src, tmp_path / "out2")
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in m2["shards"]]


def test_non_utf8_member_names_in_a_tar(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    png = imagegen.encode(imagegen.photo("rocket"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (
            (b"caf\xe9.png", png),
            (b"caf\xe9.txt", b"a rocket"),
            (b"ok.png", png),
            (b"ok.txt", b"another rocket"),
        ):
            ti = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    (src / "00000.tar").write_bytes(buf.getvalue())
    m, rejects, samples = _run(src, tmp_path / "out")
    assert rejects == []
    # a sample's source names its tar and key; the key of a non-UTF-8 name carries its hash
    sources = sorted(s["source"] for s in samples)
    assert sources == ["00000.tar::" + slug("caf\udce9"), "00000.tar::ok"]


def test_parquet_nanosecond_timestamps(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "i0.png").write_bytes(imagegen.encode(imagegen.photo("coffee")))
    table = pa.table(
        {
            "path": ["i0.png"],
            "caption": ["a cup of coffee"],
            "crawled": pa.array([1_700_000_000_123_456_789], pa.timestamp("ns")),
            "took": pa.array([1_000_000_001], pa.duration("ns")),
        }
    )
    pq.write_table(table, src / "m.parquet")
    m, rejects, samples = _run(src / "m.parquet", tmp_path / "out")
    assert rejects == []
    meta = samples[0]["metadata"]
    assert meta["crawled"].startswith("2023-11-14") and meta["crawled"].endswith("123456789")
    assert "1000000001" in meta["took"]


def test_csv_cells_that_look_like_numbers_stay_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(imagegen.encode(imagegen.photo("coffee")))
    (src / "m.csv").write_text(
        "path,caption,key,crawled_at,score\n"
        "0.png,2001,007,2024-01-01 10:00:00.123456789,0.5\n"
        "1.png,1984,0042,2024-01-02 10:00:00.000000001,1\n"
        "2.png,true,1,2024-01-03 10:00:00,2\n"
    )
    m, rejects, samples = _run(src / "m.csv", tmp_path / "out")
    assert rejects == []
    got = sorted((s["pair_key"], s["caption"]) for s in samples)
    assert got == [("0042", "1984"), ("007", "2001"), ("1", "true")]
    assert samples[0]["metadata"]["crawled_at"].startswith("2024-01-0")
    assert {s["metadata"]["score"] for s in samples} == {0.5, 1.0, 2.0}


def test_sidecar_faults_name_the_sidecar(tmp_path):
    """A sidecar too large to be a caption is `bad_sidecar` naming it (the image is fine), and a second
    sidecar of one kind (`a.json` + `a.JSON`) is a `duplicate_sidecar` reject, not silently unread."""
    src = tmp_path / "src"
    src.mkdir()
    png = imagegen.encode(imagegen.photo("coffee"))
    for stem in ("big", "twice"):
        (src / f"{stem}.png").write_bytes(png)
    (src / "big.txt").write_bytes(b"x" * ((1 << 20) + 1))
    (src / "twice.json").write_text('{"caption": "the first sidecar"}')
    (src / "twice.JSON").write_text('{"caption": "the second sidecar"}')
    m, rejects, samples = _run(src, tmp_path / "out")
    got = sorted((r["key"], r["reason"], r["source"]) for r in rejects)
    assert got == [
        ("big", "bad_sidecar", "big.png"),
        ("twice_json", "duplicate_sidecar", "twice.json"),
    ]
    big = next(r for r in rejects if r["key"] == "big")
    assert "big.txt" in big["detail"] and "file_too_large" in big["detail"]
    # sorted names: 'twice.JSON' is read, 'twice.json' is the second one
    assert [s["caption"] for s in samples] == ["the second sidecar"]
    assert m["counts"]["ingest"]["input"] == 3


def test_names_that_slug_to_one_key_keep_distinct_keys(tmp_path):
    """`a b.png`, `a_b.png`, `a.b.png` and `a/b.png` all slug to `a_b`: each is kept, one under `a_b`,
    the others with their name's hash added, not rejected as duplicate keys; adding a name that slugs
    to a key already taken by a name that is the key as written does not move that key."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    png = imagegen.encode(imagegen.photo("coffee"))
    names = ["a b", "a_b", "a.b", "a/b", "other"]
    for name in names:
        (src / f"{name}.png").write_bytes(png)
        (src / f"{name}.txt").write_text(f"the picture named {name}")
    m, rejects, samples = _run(src, tmp_path / "out")
    assert rejects == []
    keys = {s["caption"].removeprefix("the picture named "): s["pair_key"] for s in samples}
    assert sorted(keys) == sorted(names)
    assert len(set(keys.values())) == len(names)
    # a name that is its key as written (a/b, a_b: folders' "/" as "_") keeps it, the first of them
    # in name order ("a/b" < "a_b"); the others add their name's hash
    assert keys["a/b"] == "a_b" and keys["other"] == "other"
    assert all(keys[n].startswith("a_b_") and len(keys[n]) == 12 for n in ("a b", "a.b", "a_b"))
    # the same keys on a rerun
    _, _, again = _run(src, tmp_path / "out2")
    assert sorted(s["pair_key"] for s in again) == sorted(keys.values())
    # "x_y" first, then "x y" added: "x_y" keeps its key
    (src / "x_y.png").write_bytes(png)
    (src / "x_y.txt").write_text("the picture named x_y")
    _, _, before = _run(src, tmp_path / "out3")
    (src / "x y.png").write_bytes(png)
    (src / "x y.txt").write_text("the picture named x y")
    _, _, after = _run(src, tmp_path / "out4")
    key_of = {s["caption"]: s["pair_key"] for s in after}
    assert (
        key_of["the picture named x_y"]
        == "x_y"
        == {s["caption"]: s["pair_key"] for s in before}["the picture named x_y"]
    )
    assert key_of["the picture named x y"].startswith("x_y_")


def test_rejects_do_not_depend_on_where_the_input_lies(tmp_path):
    """Reject details name files relative to the input's folder, as sources do: the same input at two
    places gives the same rejects.parquet, byte for byte."""
    import shutil

    src = tmp_path / "a" / "man"
    src.mkdir(parents=True)
    (src / "i0.png").write_bytes(imagegen.encode(imagegen.photo("coffee")))
    (src / "m.jsonl").write_text(
        '{"path": "i0.png", "caption": "a cup of coffee"}\n'
        '{"path": "missing.png", "caption": "gone"}\n'
        "{broken json\n"
    )
    moved = tmp_path / "elsewhere" / "deep" / "man"
    shutil.copytree(src, moved)
    _, rejects, _ = _run(src / "m.jsonl", tmp_path / "out1")
    _run(moved / "m.jsonl", tmp_path / "out2")
    assert (tmp_path / "out1" / "rejects.parquet").read_bytes() == (
        tmp_path / "out2" / "rejects.parquet"
    ).read_bytes()
    details = {r["reason"]: r["detail"] for r in rejects}
    assert details["missing_file"] == "missing.png does not exist"
    assert details["bad_manifest_row"].startswith("m.jsonl line 3: ")
    assert all(str(tmp_path) not in d for d in details.values())


def test_csv_cells_that_are_not_utf8_are_that_rows_problem(tmp_path):
    """A cp1252 export: a caption that is not UTF-8 is that row's caption_not_utf8, a latin-1 path
    still opens, and the other rows are read; a key written as a CSV null gets the default key."""
    src = tmp_path / "src"
    src.mkdir()
    png = imagegen.encode(imagegen.photo("coffee"))
    for name in (b"a.png", b"b.png", b"caf\xe9.png", b"d.png", b"e.png"):
        with open(os.fsencode(str(src)) + b"/" + name, "wb") as f:
            f.write(png)
    (src / "m.csv").write_bytes(
        b"path,caption,key\n"
        b"a.png,caf\xe9 au lait,k1\n"
        b"b.png,plain,k2\n"
        b"caf\xe9.png,a latin-1 path,k3\n"
        b"d.png,no key,NA\n"
        b"e.png,another one without,null\n"
    )
    m, rejects, samples = _run(src / "m.csv", tmp_path / "out")
    assert [(r["key"], r["reason"]) for r in rejects] == [("k1", "caption_not_utf8")]
    got = sorted((s["pair_key"], s["caption"]) for s in samples)
    assert got == [
        ("k2", "plain"),
        ("k3", "a latin-1 path"),
        ("m_000000003", "no key"),
        ("m_000000004", "another one without"),
    ]
    latin = next(s for s in samples if s["pair_key"] == "k3")
    assert latin["metadata"]["path"] == "caf\\xe9.png"


def test_reject_details_keep_paths_that_only_contain_the_input_folder(tmp_path):
    """Only paths under the input's folder lose it: `/backup/<input>/x.png` keeps its whole path."""
    src = tmp_path / "data"
    src.mkdir()
    (src / "i0.png").write_bytes(imagegen.encode(imagegen.photo("coffee")))
    other = f"{tmp_path}/backup{src}/gone.png"
    (src / "m.jsonl").write_text(
        json.dumps({"path": "i0.png", "caption": "kept"})
        + "\n"
        + json.dumps({"path": other, "caption": "elsewhere"})
        + "\n"
    )
    _, rejects, _ = _run(src / "m.jsonl", tmp_path / "out")
    assert [r["detail"] for r in rejects] == [f"{other} does not exist"]


def test_parquet_nested_nanosecond_values_become_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "i0.png").write_bytes(imagegen.encode(imagegen.photo("coffee")))
    stamps = pa.array([[1_700_000_000_123_456_789]], pa.list_(pa.timestamp("ns")))
    pq.write_table(
        pa.table({"path": ["i0.png"], "caption": ["a cup of coffee"], "seen": stamps}),
        src / "m.parquet",
    )
    m, rejects, samples = _run(src / "m.parquet", tmp_path / "out")
    assert rejects == [] and samples[0]["metadata"]["seen"] == ["2023-11-14 22:13:20.123456789"]
