"""Manifest rows have one key scheme in every format, read or not: `<manifest stem>_<0-based index of the
row in the file, 9 digits>`; a reject's detail says where the row is (line / row / item, 1-based)."""

from __future__ import annotations

import json

import apache_beam as beam
import imagegen
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mmdata.io.readers import ReadManifest
from mmdata.runner import LocalDirectRunner

KEYS = ["m_000000000", "m_000000001", "m_000000002"]


def _write(tmp_path, fmt: str) -> str:  # noqa: ANN001
    """m.<fmt> with rows: a good one, a bad one, a good one."""
    imagegen.photo("coffee").save(tmp_path / "a.png")
    imagegen.photo("rocket").save(tmp_path / "c.png")
    path = tmp_path / f"m.{fmt}"
    if fmt == "parquet":  # a Parquet row always parses: the bad row has no path
        rows = [
            {"path": "a.png", "caption": "coffee"},
            {"path": None, "caption": "no path"},
            {"path": "c.png", "caption": "rocket"},
        ]
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "csv":  # row 3 (the header is row 1) has a third field
        path.write_text("path,caption\na.png,coffee\nb.png,a comma, unquoted\nc.png,rocket\n")
    elif fmt == "jsonl":  # line 2 is broken
        path.write_text(
            '{"path": "a.png", "caption": "coffee"}\n{"path": "b.png", "caption": \n'
            '{"path": "c.png", "caption": "rocket"}\n'
        )
    elif fmt == "json":  # item 2 is not an object
        rows = [
            {"path": "a.png", "caption": "coffee"},
            "junk",
            {"path": "c.png", "caption": "rocket"},
        ]
        path.write_text(json.dumps(rows))
    return str(path)


PLACES = {
    "parquet": ("missing_path", "m.parquet row 2: no 'path' in row"),
    "csv": ("bad_manifest_row", "m.csv row 3 (the header is row 1): 3 fields"),
    "jsonl": ("bad_manifest_row", "m.jsonl line 2: "),
    "json": ("bad_manifest_row", "m.json item 2: a JSON str"),
}


@pytest.mark.parametrize("fmt", list(PLACES))
def test_bad_rows_keys_and_details_are_one_scheme(tmp_path, fmt: str) -> None:
    path = _write(tmp_path, fmt)
    reason, detail = PLACES[fmt]
    with TestPipeline(runner=LocalDirectRunner()) as p:
        recs = p | ReadManifest(path)
        got = recs | beam.Map(
            lambda r: (
                r.key,
                r.source.rsplit("#", 1)[1],
                r.error[0] if r.error else None,
                bool(r.error) and detail in r.error[1],
            )
        )
        assert_that(
            got,
            equal_to(
                [
                    (KEYS[0], "0", None, False),
                    (KEYS[1], "1", reason, True),  # was m_row3 for CSV, m_000000001 for JSONL
                    (KEYS[2], "2", None, False),  # the row after a bad CSV row keeps its index
                ]
            ),
        )


def test_blank_lines_and_multiline_values_keep_positions(tmp_path) -> None:
    """JSON Lines count lines (blank ones too), CSV counts records (a quoted newline is one row)."""
    imagegen.photo("coffee").save(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "caption": "x"}\n\n{broken\n')
    (tmp_path / "n.csv").write_text(
        'path,caption\na.png,"two\nlines"\nb.png,x,y\n\na.png,after a blank line\n'
    )
    for name, expected in [
        ("m.jsonl", [("m_000000000", None), ("m_000000002", "m.jsonl line 3: ")]),
        (
            "n.csv",
            [
                ("n_000000000", None),
                ("n_000000001", "n.csv row 3 (the header is row 1): "),
                ("n_000000002", None),
            ],
        ),
    ]:
        prefixes = dict(expected)
        with TestPipeline(runner=LocalDirectRunner()) as p:
            recs = p | ReadManifest(str(tmp_path / name))
            got = recs | beam.Map(
                lambda r, prefixes=prefixes: (
                    r.key,
                    r.error is not None
                    # named relative to the input's folder (rejects do not depend on where it lies)
                    and r.error[1].startswith(str(prefixes.get(r.key))),
                )
            )
            assert_that(got, equal_to([(k, d is not None) for k, d in expected]))
