"""`mmdata inspect`: the per-stage count table follows the pipeline, not the alphabet."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmdata.inspect import write_report


def _manifest(stages: list[str], counts: dict[str, dict]) -> dict:
    return {
        "job": "demo",
        "mmdata_version": "0",
        "stages": stages,
        "counts": counts,
        "shards": [],
        "tasks": {},
        "mixture": {},
        "totals": {"samples": 0, "rejects": 0},
    }


def test_stage_table_follows_the_manifest_stages(tmp_path: Path) -> None:
    chain = ["ingest", "quality", "dedup", "txt2img", "write"]
    counts = {s: {"input": 10, "kept": 9, "rejected": {"why": 1}} for s in [*chain, "extra", "aux"]}
    m = _manifest(chain, counts)
    # written as the pipelines write it: sorted keys, so `counts` reads alphabetically
    (tmp_path / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True))
    html = Path(write_report(tmp_path)).read_text()
    table = html.split("<h2>Per-stage counts</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]+)</td>", table)
    assert rows == [*chain, "aux", "extra"]


def test_stage_order_ignores_listed_stages_without_counts() -> None:
    from mmdata.inspect import stage_order

    counts = {"b": {}, "a": {}, "c": {}}
    assert stage_order({"stages": ["c", "missing", "b", "c"], "counts": counts}) == ["c", "b", "a"]
    assert stage_order({"counts": counts}) == ["a", "b", "c"]  # an older manifest without stages
