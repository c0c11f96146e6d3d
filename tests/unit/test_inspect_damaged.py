"""`mmdata inspect` on a dataset whose rejects.parquet, shard sidecars or shard bytes are damaged: each
is a one-line Problem naming the file, the report is still written and the command still succeeds (was:
a corrupt rejects.parquet failed the command with pyarrow's `'<Buffer>'` message; a missing
rejects.parquet, a missing or garbage sidecar and a tar changed at the same size went unmentioned)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmdata import cli
from mmdata.io.shards import META_SHA, ShardItem, encode_tar
from mmdata.transforms.manifest import REJECT_SCHEMA

PROBLEMS = "<h2 class='err'>Problems</h2>"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return buf.getvalue()


def _rejects(n: int) -> bytes:
    rows = [
        {"key": f"r{i}", "stage": "quality", "reason": "too_small", "detail": "4x4", "source": None}
        for i in range(n)
    ]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), buf)
    return buf.getvalue()


def _dataset(root: Path, n_shards: int = 2, per_shard: int = 2, rejects: int = 3) -> Path:
    """A complete dataset as the jobs write it: tars, sidecars (rows + the tar's sha256), rejects and
    a manifest with each shard's size and sha256."""
    root.mkdir()
    shards = []
    for s in range(n_shards):
        keys = [f"{s * per_shard + i:09d}" for i in range(per_shard)]
        tar = encode_tar(
            [(k, ShardItem(k, {"png": _png()}, meta={"caption": f"cap {k}"})) for k in keys]
        )
        sha = hashlib.sha256(tar).hexdigest()
        (root / f"{s:05d}.tar").write_bytes(tar)
        table = pa.table({"sort_key": keys}).replace_schema_metadata({META_SHA: sha.encode()})
        pq.write_table(table, root / f"{s:05d}.parquet")
        shards.append(
            {
                "name": f"{s:05d}.tar",
                "parquet": f"{s:05d}.parquet",
                "samples": per_shard,
                "bytes": len(tar),
                "sha256": sha,
            }
        )
    (root / "rejects.parquet").write_bytes(_rejects(rejects))
    total = n_shards * per_shard
    manifest = {
        "job": "demo",
        "mmdata_version": "0",
        "stages": ["ingest", "quality"],
        "counts": {
            "ingest": {"input": total + rejects, "kept": total + rejects, "rejected": {}},
            "quality": {
                "input": total + rejects,
                "kept": total,
                "rejected": {"too_small": rejects},
            },
        },
        "shards": shards,
        "tasks": {"txt2img": total},
        "mixture": {"txt2img": 1.0},
        "totals": {"samples": total, "rejects": rejects},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return root


def _report(ds: Path, capsys, *extra: str) -> str:
    """The page written by the command line, which must succeed and say only where it wrote it."""
    assert cli.main(["inspect", str(ds), *extra]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "error" not in captured.err
    return (ds / "inspect.html").read_text()


def _problems(page: str) -> list[str]:
    """The Problems table's rows as `file: what` lines."""
    assert PROBLEMS in page
    table = page.split(PROBLEMS, 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr><td>")[1:]
    return [
        r.split("</td>", 1)[0] + ": " + r.split("'err'>", 1)[1].split("</td>", 1)[0] for r in rows
    ]


def test_complete_dataset_has_no_problems_and_says_what_was_hashed(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    page = _report(ds, capsys, "--max-samples", "2")
    assert "Problems" not in page
    assert page.count("class='s'") == 2  # the samples come from 00000.tar alone
    assert "sha256 checked against the manifest for 00000.tar" in page
    assert "the other 1 shard by size only" in page
    assert "<td>too_small</td><td>3</td>" in page  # the reject table


def test_corrupt_rejects_parquet_is_a_problem_not_a_failure(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    (ds / "rejects.parquet").write_bytes(b"junk!")
    page = _report(ds, capsys)
    problems = _problems(page)
    assert len(problems) == 1, problems
    assert problems[0].startswith("rejects.parquet: cannot be read as Parquet: ArrowInvalid: ")
    assert "smaller than the minimum file footer" in problems[0]
    assert "Buffer" not in page
    assert "Reject reasons" not in page  # no table from a file that cannot be read
    assert "Per-stage counts" in page and page.count("class='s'") == 4  # the rest is still there


def test_rejects_parquet_of_another_shape_is_a_problem(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    pq.write_table(pa.table({"key": ["a"], "why": ["x"]}), ds / "rejects.parquet")
    problems = _problems(_report(ds, capsys))
    assert problems == [
        "rejects.parquet: has no detail, reason, source, stage column: not mmdata&#x27;s rejects file"
    ]


def test_missing_rejects_parquet_is_a_problem(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds", rejects=15)
    (ds / "rejects.parquet").unlink()
    page = _report(ds, capsys)
    assert "15 rejects" in page  # the manifest's count, as before
    assert _problems(page) == ["rejects.parquet: missing; the manifest counts 15 rejects"]


def test_rejects_parquet_with_other_row_count_is_a_problem(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds", rejects=3)
    (ds / "rejects.parquet").write_bytes(_rejects(2))
    page = _report(ds, capsys)
    assert _problems(page) == ["rejects.parquet: holds 2 rows, the manifest counts 3 rejects"]
    assert "<td>too_small</td><td>2</td>" in page  # the rows it has are still shown


def test_reject_rows_without_detail_or_source_are_shown(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds", rejects=2)
    rows = [
        {"key": "r0", "stage": "quality", "reason": "odd", "detail": None, "source": None},
        {"key": "r1", "stage": None, "reason": "odd", "detail": "x", "source": "a.png"},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), ds / "rejects.parquet")
    page = _report(ds, capsys)
    assert "Problems" not in page and "<td>odd</td><td>1</td><td>r0: </td>" in page
    assert "<td>None</td><td>odd</td><td>1</td><td>a.png: x</td>" in page


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda p: p.unlink(), "00001.parquet: sidecar of 00001.tar: missing"),
        (
            lambda p: p.write_bytes(b"junk!" * 40),
            "00001.parquet: sidecar of 00001.tar: cannot be read as Parquet: ArrowInvalid: "
            "Parquet magic bytes not found",
        ),
        (
            lambda p: pq.write_table(pa.table({"sort_key": ["x"]}), p),
            "00001.parquet: sidecar of 00001.tar: holds 1 rows, the manifest records 2 samples",
        ),
        (
            lambda p: pq.write_table(
                pa.table({"sort_key": ["a", "b"]}).replace_schema_metadata({META_SHA: b"f00d"}), p
            ),
            "00001.parquet: sidecar of 00001.tar: records the tar&#x27;s sha256 as f00d, the "
            "manifest ",
        ),
    ],
    ids=["missing", "garbage", "rows", "sha256"],
)
def test_damaged_sidecar_is_a_problem_naming_it(tmp_path: Path, capsys, damage, what: str) -> None:
    ds = _dataset(tmp_path / "ds")
    damage(ds / "00001.parquet")  # of a shard whose samples are shown: sidecars are all checked
    page = _report(ds, capsys)
    problems = _problems(page)
    assert len(problems) == 1 and problems[0].startswith(what), problems
    assert page.count("class='s'") == 4


def _flip(path: Path, at: int) -> tuple[str, str]:
    """Flip one byte of `path` in place (same size); (sha256 before, sha256 after)."""
    data = bytearray(path.read_bytes())
    before = hashlib.sha256(data).hexdigest()
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    return before, hashlib.sha256(data).hexdigest()


def test_flipped_byte_in_a_shown_shard_is_a_problem(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    # a byte of the second sample's PNG, past the samples a --max-samples 1 report decodes: the
    # whole shard is hashed, not only the part read for thumbnails
    size = (ds / "00000.tar").stat().st_size
    before, after = _flip(ds / "00000.tar", size // 2 + 700)
    page = _report(ds, capsys, "--max-samples", "1")
    assert _problems(page) == [
        f"00000.tar: sha256 {after}, the manifest records {before}: changed since it was written"
    ]
    assert "sha256 checked against the manifest for 00000.tar" in page


def test_flipped_byte_in_an_unread_shard_needs_verify(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    before, after = _flip(ds / "00001.tar", 600)
    page = _report(ds, capsys, "--max-samples", "2")
    assert "Problems" not in page  # not read, not hashed: its size is right
    assert "the other 1 shard by size only" in page
    page = _report(ds, capsys, "--max-samples", "2", "--verify")  # the command line's flag
    assert _problems(page) == [
        f"00001.tar: sha256 {after}, the manifest records {before}: changed since it was written"
    ]
    assert "sha256 checked against the manifest for all 2 shards" in page


def test_shards_without_a_recorded_sha256_are_said_to_be_unhashed(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path / "ds")
    m = json.loads((ds / "manifest.json").read_text())
    for shard in m["shards"]:
        shard["sha256"] = ""
    (ds / "manifest.json").write_text(json.dumps(m))
    page = _report(ds, capsys)
    assert "Problems" not in page
    assert "sha256 checked against the manifest for no shard" in page
    assert "2 shards have no sha256 in the manifest" in page
