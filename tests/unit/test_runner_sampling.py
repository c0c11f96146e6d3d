"""The local runner's state-sampling period (bundles end without waiting up to 200 ms)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.worker import statesampler
from apache_beam.testing.util import assert_that, equal_to

from mmdata import runner


def test_local_runs_sample_state_every_10_ms(monkeypatch):
    init = statesampler.StateSampler.__init__
    monkeypatch.setattr(init, "__defaults__", (200,))  # Beam's default, restored after the test
    runner.run_pipeline(
        lambda p: assert_that(p | beam.Create([1, 2]) | beam.Map(abs), equal_to([1, 2]))
    )
    assert init.__defaults__ == (runner.STATE_SAMPLING_PERIOD_MS,)
    assert statesampler.StateSampler("x", None).sampling_period_ms == 10


def test_a_changed_beam_default_is_left_alone(monkeypatch):
    init = statesampler.StateSampler.__init__
    monkeypatch.setattr(init, "__defaults__", (50,))  # a Beam version that chose another period
    assert runner.shorten_state_sampling() is False
    assert init.__defaults__ == (50,)
