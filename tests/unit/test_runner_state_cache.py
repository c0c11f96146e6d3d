"""The in-process runner's state cache is off (as in Beam's worker processes) unless asked for: Beam
weighs every cached value with objsize, which walks all loaded modules' globals on each read."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import statecache
from apache_beam.testing.util import assert_that, equal_to

from mmdata.runner import LocalDirectRunner, pipeline_options


def _job(args: list[str]) -> None:
    with beam.Pipeline(runner=LocalDirectRunner(), options=pipeline_options(args)) as p:
        side = p | "Side" >> beam.Create([("a", 1), ("b", 2)])
        out = (
            p
            | beam.Create(["a", "b", "a"])
            | beam.Map(lambda k, d: d[k], d=beam.pvalue.AsDict(side))
        )
        assert_that(out, equal_to([1, 2, 1]))


def test_state_cache_off_in_process_unless_asked(monkeypatch):
    weighed: list = []
    real = statecache.get_deep_size
    monkeypatch.setattr(statecache, "get_deep_size", lambda *o: weighed.append(1) or real(*o))
    before = worker_handlers.STATE_CACHE_SIZE_MB
    _job([])  # side input read through the state API: no value weighed
    assert weighed == [] and worker_handlers.STATE_CACHE_SIZE_MB == before  # restored after
    _job(["--experiments=state_cache_size=10"])  # the user asked for a cache: Beam's as it is
    assert weighed
