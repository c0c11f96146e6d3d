"""The stage pattern every transform follows: a pure function per record, a dead-letter output, and counts.

`Stage(name, fn)` applies `fn(element) -> output | Reject | Reason` to every element. Outputs go to `kept`,
refusals to `rejects` (the dead-letter output) (with stage, reason, detail, source); an unexpected exception in `fn` becomes an
`unexpected_error` reject instead of killing the job. Counts are Beam metrics (`<stage>/input`, `kept`,
`rejected_<reason>`) and also data (`counts`: `((stage, tag), n)` tallies, summed once per job by
`WriteManifest`, or per stage by `CountStages`), so they land in the manifest on every runner:
`input == kept + sum(rejected)` is checked when the manifest is written. A stage's DoFn counts what it
sees and emits one tally per tag and bundle when the bundle finishes (a retried bundle's tallies are
dropped with its outputs), instead of three counting steps per element.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from mmdata.core.reasons import Reason
from mmdata.records import Reject

log = logging.getLogger("mmdata")


def _key_and_source(element: Any) -> tuple[str, str]:
    key = getattr(element, "key", None) or getattr(element, "sample_id", None) or ""
    source = getattr(element, "source", None) or getattr(element, "target_source_key", "") or ""
    return str(key), str(source)


PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class Tally:
    """`n` records of stage `stage` ended as `tag` ("input", "kept" or "rej:<reason>") in one bundle."""

    stage: str
    tag: str
    n: int


class TallyingDoFn(beam.DoFn):
    """A DoFn that tallies its records per bundle (`self.tally(tag)`) and emits the `Tally`s when the
    bundle finishes, beside its outputs.

    The tallies are per thread: one DoFn instance may run several bundles at once on threads (Dask's
    threaded scheduler hands the same instance to every partition)."""

    stage = ""

    def start_bundle(self) -> None:
        self.__dict__.setdefault("_bundle", threading.local()).tallies = {}

    def tally(self, tag: str) -> None:
        tallies = self._bundle.tallies
        tallies[tag] = tallies.get(tag, 0) + 1

    def finish_bundle(self) -> Iterator[WindowedValue]:
        tallies, self._bundle.tallies = self._bundle.tallies, {}
        for tag, n in sorted(tallies.items()):
            yield GlobalWindows.windowed_value(Tally(self.stage, tag, n))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_bundle", None)  # thread-local: not picklable, and per process anyway
        return state


class _StageFn(TallyingDoFn):
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
        self.tally("input")
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
            self.tally("rej:" + out.reason)
            self._progress(False)
        else:
            self._inc("kept")
            self.tally("kept")
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

    One `CombinePerKey(sum)` for the whole job (combined per bundle before the shuffle), instead of a
    global combine per stage: per-stage combines were a third of the job's transforms.
    """

    def expand(self, tallies):
        return (
            tallies
            | "Tally" >> beam.CombinePerKey(sum)
            | "One" >> beam.combiners.ToList()
            | "PerStage" >> beam.FlatMap(lambda t: sorted(summarize_tallies(t).items()))
        )


def split_outputs(
    mixed: beam.PCollection,
) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    """(kept, rejects, counts) of a `TallyingDoFn`'s output, which holds all three.

    Filters instead of a multi-output ParDo: Beam's Dask runner does not keep tagged outputs apart.
    `counts` are `((stage, tag), n)` pairs, summed by `WriteManifest` / `CountStages`.
    """
    kept = mixed | "Kept" >> beam.Filter(lambda x: not isinstance(x, (Reject, Tally)))
    rejects = mixed | "Rejected" >> beam.Filter(lambda x: isinstance(x, Reject))
    counts = mixed | "Tallies" >> beam.FlatMap(
        lambda x: [((x.stage, x.tag), x.n)] if isinstance(x, Tally) else []
    )
    return kept, rejects, counts


class Stage(beam.PTransform):
    """Apply a per-record function with a dead-letter output and counts."""

    def __init__(self, name: str, fn: Callable[[Any], Any]):
        super().__init__(label=name)
        self.stage = name
        self.fn = fn

    def expand(self, pcoll) -> dict[str, beam.PCollection]:
        """Returns {"kept", "rejects", "counts"}."""
        kept, rejects, counts = split_outputs(
            pcoll | "Apply" >> beam.ParDo(_StageFn(self.stage, self.fn))
        )
        return {"kept": kept, "rejects": rejects, "counts": counts}
