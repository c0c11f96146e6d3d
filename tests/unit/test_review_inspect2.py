"""`mmdata inspect` on a damaged dataset still writes its report (review finding 12)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmdata.inspect import write_report
from mmdata.io.shards import ShardItem, encode_tar


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(root: Path, n_shards: int = 2, per_shard: int = 2) -> Path:
    root.mkdir()
    shards = []
    for s in range(n_shards):
        samples = [
            (
                f"{s * per_shard + i:09d}",
                ShardItem(f"{s}{i}", {"png": _png("red")}, meta={"caption": f"cap {s}.{i}"}),
            )
            for i in range(per_shard)
        ]
        tar = encode_tar(samples)
        (root / f"{s:05d}.tar").write_bytes(tar)
        pq.write_table(pa.table({"sort_key": [k for k, _ in samples]}), root / f"{s:05d}.parquet")
        shards.append(
            {
                "name": f"{s:05d}.tar",
                "parquet": f"{s:05d}.parquet",
                "samples": per_shard,
                "bytes": len(tar),
                "sha256": "",
            }
        )
    manifest = {
        "job": "ingest",
        "mmdata_version": "0",
        "stages": ["ingest"],
        "counts": {"ingest": {"input": 4, "kept": 4, "rejected": {}}},
        "shards": shards,
        "tasks": {"pair": n_shards * per_shard},
        "mixture": {},
        "totals": {"samples": n_shards * per_shard, "rejects": 0},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return root


def _problems(page: str) -> str:
    assert "<h2 class='err'>Problems</h2>" in page
    return page.split("<h2 class='err'>Problems</h2>", 1)[1].split("</table>", 1)[0]


def test_good_dataset_has_no_problems_section(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    page = Path(write_report(ds)).read_text()
    assert "Problems" not in page
    assert page.count("class='s'") == 4


def test_truncated_shard_is_a_problem_on_the_page(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    data = (ds / "00000.tar").read_bytes()
    (ds / "00000.tar").write_bytes(data[:1000])
    page = Path(write_report(ds)).read_text()
    table = _problems(page)
    assert "00000.tar" in table and "truncated" in table
    assert "cannot be read" in table  # reading it stopped at the damage
    assert page.count("class='s'") == 2  # the other shard's samples are still shown
    assert "Per-stage counts" in page


def test_random_bytes_shard_is_a_problem_on_the_page(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    size = (ds / "00001.tar").stat().st_size
    (ds / "00001.tar").write_bytes(
        (bytes(range(256)) * (size // 256 + 1))[:size]
    )  # same size: only reading it shows the damage
    table = _problems(Path(write_report(ds)).read_text())
    assert "00001.tar" in table and "cannot be read" in table


def test_zeroed_shard_same_size_is_a_problem(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    size = (ds / "00000.tar").stat().st_size
    (ds / "00000.tar").write_bytes(b"\0" * size)
    table = _problems(Path(write_report(ds)).read_text())
    assert "00000.tar" in table and "holds 0 samples, the manifest records 2" in table


def test_missing_shard_is_a_problem_on_the_page(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    (ds / "00000.tar").unlink()
    page = Path(write_report(ds)).read_text()
    table = _problems(page)
    assert "00000.tar" in table and "missing" in table
    assert page.count("class='s'") == 2


def test_member_without_a_dot_is_a_problem_on_the_page(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    with tarfile.open(ds / "00000.tar", "w") as t:
        ti = tarfile.TarInfo("README")
        ti.size = 2
        t.addfile(ti, io.BytesIO(b"hi"))
    table = _problems(Path(write_report(ds)).read_text())
    assert "00000.tar" in table and "&#x27;README&#x27;" in table


def test_sample_json_that_is_not_an_object_is_a_problem(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds", n_shards=1, per_shard=1)
    with tarfile.open(ds / "00000.tar", "w") as t:
        for name, data in (("000000000.json", b"[1, 2"), ("000000000.png", _png("blue"))):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    table = _problems(Path(write_report(ds)).read_text())
    assert "000000000.json is not valid sample metadata" in table


def test_out_an_existing_folder_writes_inspect_html_inside(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "ds")
    reports = tmp_path / "reports"
    reports.mkdir()
    out = write_report(ds, reports)
    assert Path(out) == reports / "inspect.html"
    assert (reports / "inspect.html").read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "reports"]  # no .tmp-* left
    assert write_report(ds, tmp_path / "r.html") == str(tmp_path / "r.html")


@pytest.mark.parametrize("max_samples", [1, 3])
def test_sample_limit_does_not_report_a_short_shard(tmp_path: Path, max_samples: int) -> None:
    ds = _dataset(tmp_path / "ds")
    page = Path(write_report(ds, max_samples=max_samples)).read_text()
    assert "Problems" not in page
    assert page.count("class='s'") == max_samples
