"""rejects.parquet is streamed a (stage, key-hash prefix) group at a time: the finalizing worker never
holds every reject of a job (a web crawl's failed downloads can be a third of its rows)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmdata.records import Reject
from mmdata.transforms import manifest
from mmdata.transforms.manifest import AccountingError, reject_group, write_rejects


def _rejects(n: int) -> list[Reject]:
    return [
        Reject(
            key=f"k{i:05d}",
            stage=("ingest", "quality")[i % 2],
            reason=("corrupt_image", "blurry")[i % 2],
            detail=None if i % 3 == 0 else f"detail {i}",
            source=f"images/k{i:05d}.jpg",
        )
        for i in range(n)
    ]


class _Groups:
    """A multimap side input that records which groups were read, in what order."""

    def __init__(self, rejects: list[Reject]):
        self.rows: dict = {}
        for r in rejects:
            self.rows.setdefault(reject_group(r), []).append(r.to_dict())
        self.read: list = []

    def counts(self) -> dict:
        return {g: len(v) for g, v in self.rows.items()}

    def __getitem__(self, g):
        self.read.append(g)
        return iter(self.rows[g])


def test_rejects_stream_group_by_group_in_a_fixed_order(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(manifest, "REJECT_ROW_GROUP", 100)
    rejects = _rejects(1000)
    outs = []
    for seed in (1, 2):
        shuffled = list(rejects)
        random.Random(seed).shuffle(shuffled)
        groups = _Groups(shuffled)
        path = tmp_path / f"rejects{seed}.parquet"
        assert write_rejects(str(path), groups.counts(), groups) == 1000
        # every group read once, in order: one group's rows in memory at a time
        assert groups.read == sorted(groups.rows)
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]  # input order does not matter: byte-identical files
    f = pq.ParquetFile(tmp_path / "rejects1.parquet")
    assert f.metadata.num_rows == 1000 and f.metadata.num_row_groups > 1
    rows = f.read().to_pylist()
    assert sorted(r["key"] for r in rows) == [r.key for r in rejects]
    order = [(reject_group(Reject(**r)), r["key"]) for r in rows]
    assert order == sorted(order)
    assert {r["key"]: r for r in rows}["k00003"] == rejects[3].to_dict()


def test_no_rejects_is_an_empty_file_with_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "rejects.parquet"
    assert write_rejects(str(path), {}, _Groups([])) == 0
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.names == manifest.REJECT_SCHEMA.names


def test_a_group_that_lost_rows_fails_and_leaves_no_file(tmp_path: Path) -> None:
    groups = _Groups(_rejects(50))
    counts = groups.counts()
    g = sorted(counts)[-1]
    counts[g] += 1
    path = tmp_path / "rejects.parquet"
    with pytest.raises(AccountingError, match="rejects group"):
        write_rejects(str(path), counts, groups)
    assert list(tmp_path.iterdir()) == []
