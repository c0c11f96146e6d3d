"""`mmdata ingest` end to end on WebDataset (img2dataset) and manifest sources, bad inputs included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imagegen
import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from mmdata.config import IngestJobConfig
from pipelines import ingest

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _schema(name):
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def _run(inp: str, out: Path) -> tuple[dict, list[dict]]:
    ingest.run(IngestJobConfig(input=inp, output=str(out)))
    m = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(m, _schema("manifest"))
    for stage, c in m["counts"].items():
        assert c["input"] == c["kept"] + sum(c["rejected"].values()), stage
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert len(rejects) == m["totals"]["rejects"]
    return m, rejects


def test_ingest_img2dataset_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    jpg = imagegen.encode(imagegen.photo("coffee"), "JPEG")
    png = imagegen.encode(imagegen.photo("rocket"))
    imagegen.img2dataset_tar(
        src / "00000.tar",
        [
            ("000000000", jpg, "a cup of coffee"),
            ("000000001", png, "a rocket"),
            ("000000002", b"", "empty"),
        ],
        extra=[("../../etc/evil.jpg", jpg), ("/abs/path.txt", b"x")],
    )
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "key": "000000000",
                    "url": "https://e.com/0.jpg",
                    "status": "success",
                    "error_message": None,
                },
                {
                    "key": "000000003",
                    "url": "https://e.com/3.jpg",
                    "status": "failed_to_download",
                    "error_message": "HTTP 404",
                },
            ]
        ),
        src / "00000.parquet",
    )
    imagegen.img2dataset_tar(src / "00001.tar", [("000000001", jpg, "the same key again")])
    whole = (src / "00000.tar").read_bytes()
    (src / "00002.tar").write_bytes(whole[:700])  # malformed: cut inside the first member
    m, rejects = _run(str(src), tmp_path / "out")
    reasons = sorted((r["key"], r["reason"]) for r in rejects)
    assert reasons == sorted(
        [
            ("000000002", "empty_file"),
            ("etc_evil", "unsafe_tar_member"),
            ("abs_path", "unsafe_tar_member"),
            ("000000003", "download_failed"),
            ("000000001", "duplicate_key"),
            ("000000000", "corrupt_tar"),
            ("00002_tar", "corrupt_tar"),
        ]
    )
    assert m["totals"]["samples"] == 2
    samples = list(wds.WebDataset(str(tmp_path / "out" / "00000.tar"), shardshuffle=False))
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"]
        pair = {**{k: v for k, v in meta.items() if k != "pair_key"}, "key": meta["pair_key"]}
        jsonschema.validate(pair, _schema("image_text_pair"))
        assert (
            s["txt"].decode() == pair["caption"]
            and {"jpeg": "jpg"}.get(pair["format"], pair["format"]) in s
        )
    by_key = {json.loads(s["json"])["key"]: json.loads(s["json"]) for s in samples}
    urls = {p["metadata"].get("url") for p in by_key.values()}
    assert "https://example.com/000000000.jpg" in urls


def test_ingest_manifest_source(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    imagegen.photo("chelsea").save(imgs / "cat.png")
    (imgs / "trunc.jpg").write_bytes(imagegen.encode(imagegen.photo("coffee"), "JPEG")[:500])
    rows = [
        {"path": "imgs/cat.png", "caption": "a cat", "license": "CC0"},
        {"path": "imgs/trunc.jpg", "caption": "coffee"},
        {"path": "imgs/nope.png", "caption": "missing"},
        {"path": "imgs/cat.png", "caption": ""},
        {"path": "gs://bucket/a.jpg", "caption": "no gcp extra here"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    m, rejects = _run(str(tmp_path / "m.jsonl"), tmp_path / "out")
    assert sorted(r["reason"] for r in rejects) == [
        "caption_empty",
        "missing_file",
        "truncated_image",
        "unsupported_filesystem",
    ]
    (s,) = list(wds.WebDataset(str(tmp_path / "out" / "00000.tar"), shardshuffle=False))
    meta = json.loads(s["json"])
    assert (
        meta["caption"] == "a cat"
        and meta["metadata"]["license"] == "CC0"
        and meta["mode"] == "RGB"
    )
    assert meta["metadata"]["path"].endswith("imgs/cat.png") and meta["source"].endswith(
        "m.jsonl#0"
    )


def test_a_job_where_every_record_is_rejected_or_nothing_to_read(tmp_path, capsys):
    """Nothing to read (an empty folder, a manifest without its path column) is a one-line error
    before the job; a job whose every record is rejected still accounts, exit 0, no crash."""
    from mmdata.cli import main

    (tmp_path / "empty").mkdir()
    assert (
        main(["ingest", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o1")]) == 2
    )
    assert "holds no images" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    (tmp_path / "bad.csv").write_text("image,text\na.jpg,a cat\n")  # no path column
    assert (
        main(["ingest", "--input", str(tmp_path / "bad.csv"), "--output", str(tmp_path / "o2")])
        == 2
    )
    assert "no column 'path'" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "x.png").write_bytes(b"")  # zero bytes: rejected by ingest
    (tmp_path / "one" / "x.txt").write_text("a cat")
    m, rejects = _run(str(tmp_path / "one"), tmp_path / "o3")
    assert m["counts"]["ingest"] == {"input": 1, "kept": 0, "rejected": {rejects[0]["reason"]: 1}}
    assert all(m["counts"][s]["input"] == 0 for s in ingest.STAGES[1:]) and m["shards"] == []


def test_inputs_auto_detection_refuses_to_guess(tmp_path):
    import pytest

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    imagegen.photo("chelsea").save(mixed / "cat.png")
    (mixed / "cat.txt").write_text("a cat")
    imagegen.img2dataset_tar(
        mixed / "archive.tar", [("000000000", imagegen.encode(imagegen.photo("coffee")), "a cup")]
    )
    with pytest.raises(ValueError, match="both .tar shards and loose images"):
        _run(str(mixed), tmp_path / "out")
    # said explicitly, each kind reads its own files
    m, _ = _run_kind(str(mixed), tmp_path / "o_folder", "folder")
    assert m["counts"]["ingest"]["input"] == 2  # cat.png and the .tar as unsupported_extension
    m, _ = _run_kind(str(mixed), tmp_path / "o_wds", "webdataset")
    assert m["counts"]["ingest"]["input"] == 1
    with pytest.raises(ValueError, match="is a file but not a manifest"):
        _run(str(mixed / "cat.png"), tmp_path / "o3")
    with pytest.raises(ValueError, match="input_kind manifest needs a file"):
        _run_kind(str(mixed), tmp_path / "o4", "manifest")
    with pytest.raises(ValueError, match="input_kind folder needs a folder"):
        _run_kind(str(mixed / "cat.png"), tmp_path / "o5", "folder")


def _run_kind(inp: str, out: Path, kind: str) -> tuple[dict, list[dict]]:
    ingest.run(IngestJobConfig(input=inp, input_kind=kind, output=str(out)))
    m = json.loads((out / "manifest.json").read_text())
    return m, pq.read_table(out / "rejects.parquet").to_pylist()


def test_output_folder_safety(tmp_path):
    """The job never deletes files of a folder that is not an mmdata dataset, never writes into a file,
    and never writes inside a folder input; in its own dataset it removes only shard-named files."""
    import pytest

    src = tmp_path / "src"
    src.mkdir()
    imagegen.photo("chelsea").save(src / "cat.png")
    (src / "cat.txt").write_text("a cat")
    user = tmp_path / "user"
    user.mkdir()
    (user / "00007.tar").write_bytes(b"mine")
    (user / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an mmdata dataset"):
        _run(str(src), user)
    assert sorted(p.name for p in user.iterdir()) == ["00007.tar", "notes.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _run(str(src), tmp_path / "afile")
    with pytest.raises(ValueError, match="inside the input folder"):
        _run(str(src), src / "out")
    with pytest.raises(ValueError, match="inside the input folder"):
        _run(str(src), src)
    out = tmp_path / "out"
    _run(str(src), out)
    # re-ingesting a dataset's own tars into it would replace shards that later records still read
    for inp, kind in ((out, "webdataset"), (out / "*.tar", "auto"), (out / "00000.tar", "auto")):
        with pytest.raises(ValueError, match="inside the input folder"):
            ingest.run(IngestJobConfig(input=str(inp), output=str(out), input_kind=kind))
    (out / "00009.tar").write_bytes(b"stale shard")
    (out / "keep.parquet").write_bytes(b"not a shard name")
    _run(str(src), out)  # a rerun into its own dataset
    names = sorted(p.name for p in out.iterdir())
    assert "00009.tar" not in names and "keep.parquet" in names and "00000.tar" in names


def test_shards_do_not_depend_on_the_directory_the_job_ran_from(tmp_path, monkeypatch):
    src = tmp_path / "src"
    imagegen.good_folder(src, n_shapes=3)
    _run(str(src), tmp_path / "abs")
    monkeypatch.chdir(tmp_path)
    _run("src", tmp_path / "rel")
    _run("./src/", tmp_path / "rel2")
    moved = tmp_path / "elsewhere" / "deeper"  # the same input at another place
    shutil.copytree(src, moved)
    _run(str(moved), tmp_path / "moved")
    tars = sorted(p.name for p in (tmp_path / "abs").glob("*.tar"))
    assert tars
    for name in tars:
        data = (tmp_path / "abs" / name).read_bytes()
        assert (tmp_path / "rel" / name).read_bytes() == data
        assert (tmp_path / "rel2" / name).read_bytes() == data
        assert (tmp_path / "moved" / name).read_bytes() == data
    sample = next(iter(wds.WebDataset(str(tmp_path / "rel" / tars[0]), shardshuffle=False)))
    source = json.loads(sample["json"])["source"]  # relative to the input folder
    assert (src / source).is_file() and str(tmp_path) not in source
