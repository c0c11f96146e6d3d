"""Ingest inputs a second review found mishandled: inputs with nothing to read, malformed manifests,
manifest keys across folders, missing columns, `.json` arrays, non-JSON metadata values, broken
symlinks and tar samples with two images."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import imagegen
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mmdata.cli import main
from mmdata.config import DemoConfig, IngestJobConfig
from pipelines import demo, ingest


def _png(i: int = 0) -> bytes:
    return imagegen.encode(imagegen.shape(i))


def _strict(text: str | bytes):
    """json.loads that refuses NaN/Infinity (which Python writes and no other parser reads)."""

    def refuse(name: str):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _run(inp: str, out: Path, kind: str = "auto") -> tuple[dict, list[dict], list[dict]]:
    ingest.run(IngestJobConfig(input=inp, output=str(out), input_kind=kind))
    m = _strict((out / "manifest.json").read_text())
    for stage, c in m["counts"].items():
        assert c["input"] == c["kept"] + sum(c["rejected"].values()), stage
    rows = [r for s in m["shards"] for r in pq.read_table(out / s["parquet"]).to_pylist()]
    return m, rows, pq.read_table(out / "rejects.parquet").to_pylist()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_an_input_with_nothing_to_read_is_a_clear_error(tmp_path, capsys):
    """No image in a local folder: refused before the output is touched. A source only the job can
    list (here a tar with no sample) fails at the end of the job, before anything is written."""
    (tmp_path / "empty").mkdir()
    docs = tmp_path / "docs"
    (docs / ".git").mkdir(parents=True)
    (docs / "README.md").write_text("about the photos")
    (docs / "cat.txt").write_text("a cat")  # a caption whose image is missing
    (docs / ".git" / "x.png").write_bytes(_png())  # hidden: not an input
    for inp in (tmp_path / "empty", docs):
        with pytest.raises(ValueError, match="holds no images"):
            ingest.run(IngestJobConfig(input=str(inp), output=str(tmp_path / "out")))
        with pytest.raises(ValueError, match="holds no images"):
            demo.run(DemoConfig(input=str(inp), output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    assert main(["ingest", "--input", str(docs), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds no images" in err and "cat.txt" in err and "Traceback" not in err

    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "00000.tar", [])
    with pytest.raises(ValueError, match="holds no records"):
        ingest.run(IngestJobConfig(input=str(shards), output=str(tmp_path / "o2")))
    assert not (tmp_path / "o2" / "manifest.json").exists()


def test_malformed_manifests_are_rejects_or_clear_errors(tmp_path, capsys):
    d = tmp_path / "m"
    (d / "img").mkdir(parents=True)
    for i in range(4):
        (d / "img" / f"{i}.png").write_bytes(_png(i))
    (d / "good.jsonl").write_text(
        '{"path": "img/0.png", "caption": "shape zero"}\n{"path": "img/1.png", "caption": \n'
        '{"path": "img/1.png", "caption": "shape one"}\n'
    )
    (d / "rows.csv").write_text(  # row 3 has an unquoted comma: 3 fields
        'path,caption\nimg/2.png,"shape, two"\nimg/3.png,shape, three\nimg/3.png,shape three\n'
    )
    (d / "corrupt.parquet").write_bytes(b"PAR1 not parquet at all PAR1")
    m, kept, rejects = _run(str(d / "*"), tmp_path / "out", "manifest")  # three formats
    assert sorted(r["caption"] for r in kept) == [
        "shape one",
        "shape three",
        "shape zero",
        "shape, two",
    ]
    by = {(r["reason"], Path(r["source"].split("#")[0]).name): r for r in rejects}
    assert sorted(by) == [
        ("bad_manifest", "corrupt.parquet"),
        ("bad_manifest_row", "good.jsonl"),
        ("bad_manifest_row", "rows.csv"),
    ]
    bad_file = by["bad_manifest", "corrupt.parquet"]["detail"]
    # named relative to the input's folder, as sources are
    assert bad_file.startswith("corrupt.parquet: ") and "<Buffer>" not in bad_file
    assert "good.jsonl line 2" in by["bad_manifest_row", "good.jsonl"]["detail"]
    assert "rows.csv row 3" in by["bad_manifest_row", "rows.csv"]["detail"]
    assert m["counts"]["ingest"]["input"] == 7  # 4 rows kept + 2 bad rows + 1 bad file

    # a single manifest that cannot be read at all: refused up front, naming it, no traceback
    with pytest.raises(ValueError, match="corrupt.parquet: not a readable Parquet file"):
        ingest.run(IngestJobConfig(input=str(d / "corrupt.parquet"), output=str(tmp_path / "o")))
    out = str(tmp_path / "o")
    assert main(["ingest", "--input", str(d / "corrupt.parquet"), "--output", out]) == 2
    err = capsys.readouterr().err
    assert "corrupt.parquet" in err and "Traceback" not in err and "<Buffer>" not in err
    (d / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: holds no rows"):
        ingest.run(IngestJobConfig(input=str(d / "empty.jsonl"), output=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_default_manifest_keys_are_distinct_across_folders(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "i.png").write_bytes(_png(ord(name)))
        rows = [{"path": "i.png", "caption": f"shape {name}"}]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name / "data.parquet")
    m, kept, rejects = _run(str(tmp_path / "*" / "data.parquet"), tmp_path / "out")
    assert rejects == []
    assert sorted(r["pair_key"] for r in kept) == ["a_data_000000000", "b_data_000000000"]
    m2, kept2, _ = _run(str(tmp_path / "*" / "data.parquet"), tmp_path / "out2")
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in m2["shards"]]
    # a single manifest keeps its keys as before: relative to its own folder
    _, single, _ = _run(str(tmp_path / "a" / "data.parquet"), tmp_path / "out3")
    assert [r["pair_key"] for r in single] == ["data_000000000"]


def test_a_manifest_without_the_path_or_caption_column(tmp_path):
    (tmp_path / "i.png").write_bytes(_png())
    (tmp_path / "bad.csv").write_text("image,text\ni.png,a shape\n")
    with pytest.raises(ValueError, match=r"no column 'path' or 'caption' \(its columns: 'image'"):
        ingest.run(IngestJobConfig(input=str(tmp_path / "bad.csv"), output=str(tmp_path / "o")))
    (tmp_path / "bad.jsonl").write_text('{"path": "i.png", "text": "a shape"}\n')
    with pytest.raises(ValueError, match="no column 'caption'.*--ingest.caption_field"):
        ingest.run(IngestJobConfig(input=str(tmp_path / "bad.jsonl"), output=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
    # in a glob with a usable manifest, the file without the column is one bad_manifest reject
    (tmp_path / "good.csv").write_text("path,caption\ni.png,a shape\n")
    m, kept, rejects = _run(str(tmp_path / "*.csv"), tmp_path / "out")
    assert len(kept) == 1
    (rej,) = rejects
    assert rej["reason"] == "bad_manifest" and rej["source"] == "bad.csv"  # relative to the input
    assert "no column 'path' or 'caption'" in rej["detail"]


def test_a_json_manifest_is_an_array_of_rows(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    rows = [{"path": f"{i}.png", "caption": f"shape {i}", "n": i} for i in range(2)] + ["junk"]
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=2))  # pretty-printed
    m, kept, rejects = _run(str(tmp_path / "rows.json"), tmp_path / "out")
    assert sorted(r["caption"] for r in kept) == ["shape 0", "shape 1"]
    assert [(r["reason"], r["source"].rsplit("#", 1)[1]) for r in rejects] == [
        ("bad_manifest_row", "2")
    ]
    # JSON Lines named .json are read as such; other JSON documents are refused clearly
    (tmp_path / "lines.json").write_text('{"path": "2.png", "caption": "shape 2"}\n' * 2)
    _, kept, _ = _run(str(tmp_path / "lines.json"), tmp_path / "out2")
    assert len(kept) == 2
    for name, doc, msg in [
        ("str.json", '"just a string"', "the JSON document is a str"),
        ("cut.json", '[{"path": "0.png", "caption": "x"},', "not valid JSON"),
    ]:
        (tmp_path / name).write_text(doc)
        with pytest.raises(ValueError, match=msg):
            ingest.run(IngestJobConfig(input=str(tmp_path / name), output=str(tmp_path / "o")))


def test_metadata_is_strict_json_in_every_member(tmp_path):
    """NaN/Infinity -> null; bytes -> their UTF-8 text, else base64 (mmdata/core/jsonvalues.py)."""
    (tmp_path / "i.png").write_bytes(_png(1))
    rows = [
        {
            "path": "i.png",
            "caption": "a shape",
            "score": math.nan,
            "big": math.inf,
            "blob": b"\xff\x00",
            "note": b"caf\xc3\xa9",
            "ok": 1.5,
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "j.png").write_bytes(_png(2))
    # Python's json.loads reads NaN and Infinity in a sidecar; they must not come back out as such
    (folder / "j.json").write_text('{"caption": "b shape", "w": NaN, "h": [-Infinity, 2]}')
    for inp, out in [(tmp_path / "m.parquet", tmp_path / "o1"), (folder, tmp_path / "o2")]:
        m, kept, _ = _run(str(inp), out)
        (s,) = list(wds.WebDataset(str(out / "00000.tar"), shardshuffle=False))
        meta = _strict(s["json"])["metadata"]
        assert meta == _strict(kept[0]["metadata_json"])
        if inp == folder:
            assert meta["w"] is None and meta["h"] == [None, 2]
        else:
            assert meta["score"] is None and meta["big"] is None and meta["ok"] == 1.5
            assert meta["blob"] == "/wA=" and meta["note"] == "café"


def test_a_broken_symlink_is_a_reject(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(_png(1))
    (src / "a.txt").write_text("a shape")
    os.symlink(tmp_path / "gone.png", src / "b.png")
    (src / "b.txt").write_text("its image is gone")
    m, kept, rejects = _run(str(src), tmp_path / "out")
    assert [Path(r["source"]).name for r in kept] == ["a.png"]
    (rej,) = rejects
    assert rej["reason"] == "unreadable_file" and "broken symlink" in rej["detail"]
    assert rej["source"] == "b.png" and m["counts"]["ingest"]["input"] == 2


def test_symlinked_folders_are_followed_once(tmp_path, caplog):
    """A folder of links to the real data is read through the links; a link back into the tree, or
    to a folder holding it (a loop), is not followed twice (a warning says so) and the job ends."""
    data = tmp_path / "elsewhere" / "cats"
    data.mkdir(parents=True)
    (data / "c.png").write_bytes(_png(5))
    (data / "c.txt").write_text("a cat shape")
    os.symlink(data.parent, data / "loop")  # a loop inside the linked folder
    src = tmp_path / "src"
    (src / "own").mkdir(parents=True)
    (src / "own" / "a.png").write_bytes(_png(1))
    (src / "own" / "a.txt").write_text("a shape")
    os.symlink(data, src / "cats")
    os.symlink(src / "own", src / "again")  # a second name for a folder in the tree
    os.symlink(tmp_path, src / "up")  # holds the input itself
    m, kept, rejects = _run(str(src), tmp_path / "out")
    names = sorted(r["source"] for r in kept)
    assert names == ["cats/c.png", "own/a.png"] and rejects == []
    assert m["counts"]["ingest"]["input"] == 2
    for name in ("again", "up", "loop"):
        assert caplog.text.count(f"{name}: not followed") == 1, name


def test_a_tar_sample_with_two_images_rejects_the_second(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    jpg = imagegen.encode(imagegen.photo("coffee"), "JPEG")
    _tar(
        src / "00000.tar",
        [
            ("k.jpg", jpg),
            ("k.png", _png(2)),
            ("k.txt", b"a cup of coffee"),
            ("n.png", _png(3)),
            ("n.PNG", _png(4)),
            ("n.txt", b"a shape"),
        ],
    )
    (src / "00000.parquet").write_bytes(b"PAR1 cut off")  # its status sidecar, broken
    m, kept, rejects = _run(str(src), tmp_path / "out")
    assert sorted(r["caption"] for r in kept) == ["a cup of coffee", "a shape"]
    by = {r["reason"]: r for r in rejects}
    assert sorted(by) == ["bad_sidecar", "duplicate_member", "extra_image"]
    assert by["extra_image"]["source"].endswith("00000.tar::k.png")
    assert "'k.jpg' was read" in by["extra_image"]["detail"]
    assert by["duplicate_member"]["source"].endswith("00000.tar::n.PNG")
    sidecar = by["bad_sidecar"]["detail"]
    assert sidecar.startswith("00000.parquet: ") and "<Buffer>" not in sidecar
    assert m["counts"]["ingest"]["input"] == 5


def test_tar_fields_ingest_does_not_read_are_named_in_the_record(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    _tar(
        src / "00000.tar",
        [
            ("k.cls", b"3"),
            ("k.png", _png(2)),
            ("k.seg.png", _png(5)),
            ("k.txt", b"a shape"),
            ("n.png", _png(3)),
            ("n.txt", b"another shape"),
        ],
    )
    with caplog.at_level("WARNING"):
        m, kept, rejects = _run(str(src), tmp_path / "out")
    assert rejects == [] and m["counts"]["ingest"]["input"] == 2
    meta = {r["caption"]: json.loads(r["metadata_json"]) for r in kept}
    assert meta["a shape"]["unread_fields"] == ["cls", "seg.png"]
    assert "unread_fields" not in meta["another shape"]
    assert "does not read" in caplog.text and "'seg.png'" in caplog.text
