"""`make bench-ingest` runs end to end on a tiny corpus: both configurations keep every image, and the
figures it prints are there (the timings themselves are for the bench, not for a test)."""

from __future__ import annotations

import re

from mmdata.bench import ingest as bench


def test_bench_ingest_smoke(tmp_path, capsys):
    for extra in ([], ["--full-jpeg-decode"]):
        args = ["--n", "24", "--n-small", "8", "--size", "64", "--repeat", "1"]
        assert bench.main([*args, "--workdir", str(tmp_path), *extra]) == 0
        out = capsys.readouterr().out
        kept = [int(k) for k in re.findall(r"\s(\d+) kept in", out)]
        assert kept == [24] * 5, out  # plain loop, Beam floor, 1 worker, 2 workers (warm, cold)
        assert "ratio beam 1 worker / plain loop:" in out and "2 workers / 1 worker:" in out
        assert "ratio beam floor / plain loop:" in out
        assert ("full-size decode" in out) == bool(extra)
