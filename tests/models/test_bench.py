"""The model benchmark runs end to end (on the cheapest backend) and reports sane numbers."""

from __future__ import annotations

import json

from mmdata.bench import models as bench


def test_bench_models_smoke(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "rows.json"
    args = ["--only", "canny", "--images", "4", "--batch-sizes", "1,4", "--repeat", "1"]
    assert bench.main([*args, "--pipeline-seconds", "0.01", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["batch"] for r in rows] == [1, 4, "beam"]
    for r in rows[:2]:
        assert r["bare_ips"] > 0 and r["handler_ips"] > 0 and 0 < r["ratio"]
    assert rows[2]["pipeline_s"] > 0
    assert "canny" in capsys.readouterr().out
