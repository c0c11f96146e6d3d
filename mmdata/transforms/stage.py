"""The stage pattern every transform follows: a pure function per record, a dead-letter output, and counts.

`Stage(name, fn)` applies `fn(element) -> output | Reject | Reason` to every element. Outputs go to `kept`,
refusals to `rejects` (the dead-letter output) (with stage, reason, detail, source); an unexpected exception in `fn` becomes an
`unexpected_error` reject instead of killing the job. Counts are Beam metrics (`<stage>/input`, `kept`,
`rejected_<reason>`) and also data (`counts`: tallies, counted once per job by `WriteManifest`, or per
stage by `CountStages`), so they land in the manifest on every runner:
`input == kept + sum(rejected)` is checked when the manifest is written.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from mmdata.core.reasons import Reason
from mmdata.records import Reject

log = logging.getLogger("mmdata")


def _key_and_source(element: Any) -> tuple[str, str]:
    key = getattr(element, "key", None) or getattr(element, "sample_id", None) or ""
    source = getattr(element, "source", None) or getattr(element, "target_source_key", "") or ""
    return str(key), str(source)


PROGRESS_EVERY_S = 10.0


class _StageFn(beam.DoFn):
    def __init__(self, stage: str, fn: Callable[[Any], Any]):
        self.stage = stage
        self.fn = fn
        self._counters: dict[str, Any] = {}

    def setup(self) -> None:
        self._seen = self._kept = 0
        self._t0 = self._last = time.monotonic()

    def _progress(self, kept: bool) -> None:
        """Long runs show progress: one log line per stage and worker every PROGRESS_EVERY_S seconds."""
        self._seen += 1
        self._kept += kept
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            rate = self._seen / max(now - self._t0, 1e-9)
            log.info(
                "%s: %d records (%d kept) on this worker, %.0f/s",
                self.stage,
                self._seen,
                self._kept,
                rate,
            )

    def _inc(self, name: str) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(self.stage, name)
        self._counters[name].inc()

    def process(self, element: Any) -> Iterator[Any]:
        self._inc("input")
        try:
            out = self.fn(element)
        except Exception as e:  # noqa: BLE001 - a bad record must not kill the job
            out = Reason(
                "unexpected_error", f"{type(e).__name__}: {e} | {traceback.format_exc(limit=3)}"
            )
        if isinstance(out, Reason):
            key, source = _key_and_source(element)
            out = Reject(
                key=key, stage=self.stage, reason=out.reason, detail=out.detail, source=source
            )
        if isinstance(out, Reject):
            self._inc(f"rejected_{out.reason}")
            self._progress(False)
        else:
            self._inc("kept")
            self._progress(True)
        yield out


def summarize_tallies(tallies: list[tuple[tuple[str, str], int]]) -> dict[str, dict[str, Any]]:
    """((stage, tag), n) pairs -> {stage: {"input": n, "kept": n, "rejected": {reason: n}}}."""
    out: dict[str, dict[str, Any]] = {}
    for (stage, tag), n in sorted(tallies):
        c = out.setdefault(stage, {"input": 0, "kept": 0, "rejected": {}})
        if tag.startswith("rej:"):
            c["rejected"][tag[4:]] = c["rejected"].get(tag[4:], 0) + n
        else:
            c[tag] += n
    return out


class CountStages(beam.PTransform):
    """Stage tallies (from every stage's "counts") -> one (stage, counts) element per stage.

    One `Count.PerElement` for the whole job (combined per bundle before the shuffle), instead of a
    global combine per stage: per-stage combines were a third of the job's transforms.
    """

    def expand(self, tallies):
        return (
            tallies
            | "Tally" >> beam.combiners.Count.PerElement()
            | "One" >> beam.combiners.ToList()
            | "PerStage" >> beam.FlatMap(lambda t: sorted(summarize_tallies(t).items()))
        )


def split_rejects(mixed: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
    """(kept, rejects) of a PCollection holding both.

    Two filters instead of a multi-output ParDo: Beam's Dask runner does not keep tagged outputs apart.
    """
    kept = mixed | "Kept" >> beam.Filter(lambda x: not isinstance(x, Reject))
    rejects = mixed | "Rejected" >> beam.Filter(lambda x: isinstance(x, Reject))
    return kept, rejects


def stage_counts(name: str, inputs, kept, rejects) -> beam.PCollection:
    """The stage's tallies, computed from the data itself (not from metrics): one (name, tag) per input
    ("input") and per output ("kept" or "rej:<reason>"). `WriteManifest` counts the tallies of all stages
    and checks input == kept + rejected per stage."""
    tagged = (
        inputs | f"{name}/CountIn" >> beam.Map(lambda _, n=name: (n, "input")),
        kept | f"{name}/CountKept" >> beam.Map(lambda _, n=name: (n, "kept")),
        rejects | f"{name}/CountRej" >> beam.Map(lambda r, n=name: (n, "rej:" + r.reason)),
    )
    return tagged | f"{name}/Tallies" >> beam.Flatten()


class Stage(beam.PTransform):
    """Apply a per-record function with a dead-letter output and counts."""

    def __init__(self, name: str, fn: Callable[[Any], Any]):
        super().__init__(label=name)
        self.stage = name
        self.fn = fn

    def expand(self, pcoll) -> dict[str, beam.PCollection]:
        """Returns {"kept", "rejects", "counts"}."""
        kept, rejects = split_rejects(pcoll | "Apply" >> beam.ParDo(_StageFn(self.stage, self.fn)))
        return {
            "kept": kept,
            "rejects": rejects,
            "counts": stage_counts(self.stage, pcoll, kept, rejects),
        }
