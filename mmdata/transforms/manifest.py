"""The last step of every job: rejects.parquet (streamed a key-hash group at a time), stale-shard cleanup
and manifest.json."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
from collections.abc import Iterator
from importlib import metadata as importlib_metadata
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from mmdata.core.jsonvalues import json_safe
from mmdata.core.keys import stable_hash
from mmdata.io.paths import open_write
from mmdata.io.shards import _write_atomic, withdraw_manifest
from mmdata.transforms.stage import summarize_tallies

log = logging.getLogger("mmdata")

REJECT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("source", pa.string()),
    ]
)
VERSIONED = (
    "mmdata",
    "apache-beam",
    "webdataset",
    "pyarrow",
    "pillow",
    "numpy",
    "torch",
    "open_clip_torch",
    "faiss-cpu",
    "onnxruntime",
)


class AccountingError(RuntimeError):
    """A stage's inputs != kept + rejected: something was lost or invented."""


class NoInputError(ValueError):
    """The job's first stage got no record at all: the input holds nothing the readers take (no image,
    manifest row or tar sample). A ValueError, so the command line says it in one line; raised before
    anything is written, so no empty dataset is left looking complete."""

    # Beam logs an exception raised in a DoFn with its traceback before re-raising it, unless it is
    # already tagged with the step it ran in; this one says all there is to say in its message.
    _tagged_with_step = True


@contextlib.contextmanager
def no_input_errors() -> Iterator[None]:
    """Around a job's run: a `NoInputError` raised in a worker process reaches the caller as what the
    runner makes of it (the local multi-process runner: a RuntimeError holding the worker's
    traceback); re-raise it as itself, so the command line says it in one line there too."""
    try:
        yield
    except NoInputError:
        raise
    except Exception as e:
        found = re.search(r"NoInputError: (input .*?\(nothing was written\))", str(e))
        if found is None:
            raise
        raise NoInputError(found.group(1)) from None


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def check_accounting(counts: dict[str, dict[str, Any]], chain: list[str]) -> None:
    """Each stage: input == kept + rejected; along `chain`, a stage's kept == the next stage's input."""
    for stage, c in counts.items():
        rejected = sum(c["rejected"].values())
        if c["input"] != c["kept"] + rejected:
            raise AccountingError(
                f"stage {stage}: input {c['input']} != kept {c['kept']} + rejected {rejected}"
            )
    for a, b in zip(chain, chain[1:], strict=False):
        if a in counts and b in counts and counts[a]["kept"] != counts[b]["input"]:
            raise AccountingError(
                f"stage {a} kept {counts[a]['kept']} but stage {b} got {counts[b]['input']}"
            )


# rejects.parquet is written a group of rows at a time: groups are (stage, first REJECT_PREFIX hex
# characters of a hash of the key), 256 per stage, walked in order; rows are sorted within a group.
REJECT_PREFIX = 2
REJECT_ROW_GROUP = 65536  # rows per Parquet row group (flushed when a group boundary passes it)


def reject_group(r: Any) -> tuple[str, str]:
    """The write group of a Reject: its stage and a prefix of a stable hash of its key."""
    return r.stage, stable_hash("reject", r.key)[:REJECT_PREFIX]


def _reject_order(row: dict[str, Any]) -> tuple:
    return (row["key"], row["reason"], row["source"], row["detail"] or "")


def write_rejects(path: str, groups: dict[tuple[str, str], int], by_group: Any) -> int:
    """Stream the rejects to `path` (one Parquet file, visible once complete) a group at a time, in
    (stage, group, key, reason, source, detail) order; `by_group[g]` are group g's rows. Only one
    group's rows and one row group are held at a time. Returns the number of rows written."""
    n = 0
    with open_write(path) as f, pq.ParquetWriter(f, REJECT_SCHEMA, compression="zstd") as w:
        pending: list[dict[str, Any]] = []
        for g in sorted(groups):
            rows = sorted(by_group[g], key=_reject_order)
            if len(rows) != groups[g]:
                raise AccountingError(f"rejects group {g}: counted {groups[g]}, got {len(rows)}")
            pending += rows
            n += len(rows)
            if len(pending) >= REJECT_ROW_GROUP:
                w.write_table(pa.Table.from_pylist(pending, schema=REJECT_SCHEMA))
                pending = []
        if pending or not n:  # an empty file still holds the schema (and one empty row group)
            w.write_table(pa.Table.from_pylist(pending, schema=REJECT_SCHEMA))
    return n


_WRITER_NAME = re.compile(r"\d{5,}\.(tar|parquet)|.+\.tmp-[0-9a-f]{32}")


class _FinalizeFn(beam.DoFn):
    def __init__(
        self,
        output: str,
        job: str,
        config: dict[str, Any],
        chain: list[str],
        mixture: dict[str, float],
        notes: list[str],
        input_path: str | None = None,
    ):
        self.input_path = input_path
        self.output = output.rstrip("/")
        self.job = job
        self.config = config
        self.chain = chain
        self.mixture = mixture
        self.notes = notes

    def process(self, _, counts, shards, reject_groups, rejects, tasks):
        counts_d = summarize_tallies(counts)
        for stage in self.chain:  # a stage that got no records still accounts for them: zeros
            counts_d.setdefault(stage, {"input": 0, "kept": 0, "rejected": {}})
        check_accounting(counts_d, self.chain)
        if self.input_path is not None and self.chain and not counts_d[self.chain[0]]["input"]:
            raise NoInputError(
                f"input {self.input_path!r} holds no records: the readers found no image, manifest "
                "row or tar sample in it (nothing was written)"
            )
        shards = sorted(shards, key=lambda s: s.name)
        samples = sum(s.samples for s in shards)
        last = counts_d[self.chain[-1]]["kept"] if self.chain else samples
        if last != samples:  # also catches tallies that never arrived (every count 0)
            raise AccountingError(
                f"stage {self.chain[-1]} kept {last} records but the shards hold {samples} samples"
            )
        # rejects.parquet and stale shards change below: the previous manifest goes first (as before
        # the first shard write), so a run stopped here leaves none that disagrees with the files
        withdraw_manifest(self.output)
        n_rejects = write_rejects(f"{self.output}/rejects.parquet", reject_groups, rejects)
        self._remove_stale({s.name for s in shards} | {s.parquet for s in shards})
        skipped = sum(s.skipped for s in shards)
        log.info(
            "%s: %d shards written, %d already complete and kept as they were%s",
            self.output,
            len(shards) - skipped,
            skipped,
            " (--overwrite rewrites them)" if skipped else "",
        )
        task_counts: dict[str, int] = {}
        for task, n in sorted(tasks):
            task_counts[task] = task_counts.get(task, 0) + n
        total = sum(task_counts.values())
        mixture = (
            self.mixture or {t: round(n / total, 6) for t, n in task_counts.items()}
            if total
            else {}
        )
        manifest = {
            "format": "mmdata-webdataset-v1",
            "mmdata_version": package_versions().get("mmdata", "0"),
            "job": self.job,
            "config": self.config,
            "versions": package_versions(),
            "stages": self.chain,
            "counts": counts_d,
            "shards": [s.to_manifest() for s in shards],
            "tasks": task_counts,
            "mixture": mixture,
            "totals": {"samples": samples, "rejects": n_rejects},
            "notes": self.notes,
        }
        # strict JSON: a NaN in the config or counts would be a bare `NaN` no other parser reads
        manifest = json_safe(manifest)
        data = (json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
        _write_atomic(f"{self.output}/manifest.json", data)
        yield manifest

    def _remove_stale(self, keep: set[str]) -> None:
        """Shards of an earlier run that this run's plan no longer has, and leftover temporary files.
        Only names the shard writer makes (`NNNNN.tar`, `NNNNN.parquet`, `*.tmp-<hex>`) are removed."""
        stale = []
        for pattern in ("*.tar", "*.parquet", "*.tmp-*"):
            for m in FileSystems.match([f"{self.output}/{pattern}"])[0].metadata_list:
                name = m.path.rsplit("/", 1)[-1]
                if name not in keep and _WRITER_NAME.fullmatch(name):
                    stale.append(m.path)
        if stale:
            FileSystems.delete(stale)


class WriteManifest(beam.PTransform):
    """Writes rejects.parquet and manifest.json; outputs the manifest dict.

    Args:
        output: dataset folder.
        job: job name.
        config: resolved config (dict) stored in the manifest.
        chain: stage names in order, for the kept(n) == input(n+1) check.
        mixture: task mixing ratios; default: the tasks' shares of the samples.
        input_path: the job's input as the user named it; when given, a job whose first stage got no
            record fails with `NoInputError` naming it instead of writing an empty dataset.
    """

    def __init__(
        self,
        output: str,
        job: str,
        config: dict[str, Any],
        chain: list[str],
        mixture: dict[str, float] | None = None,
        notes: list[str] | None = None,
        input_path: str | None = None,
    ):
        super().__init__()
        self.args = (output, job, config, chain, mixture or {}, notes or [], input_path)

    def expand(self, inputs):
        tallies, shards, rejects, tasks = inputs
        # ((stage, tag), n) pairs, summed per tag here and per stage in _FinalizeFn
        counts = tallies | "Tally" >> beam.CombinePerKey(sum)
        # Rejects reach the one finalizing worker grouped (a multimap side input read a group at a
        # time), not as one list: a web crawl's failed downloads can be a third of its rows.
        keyed = rejects | "RejectGroup" >> beam.Map(lambda r: (reject_group(r), r.to_dict()))
        groups = keyed | "RejectGroups" >> beam.combiners.Count.PerKey()
        return (
            counts.pipeline
            | "Once" >> beam.Create([None])
            | "Finalize"
            >> beam.ParDo(
                _FinalizeFn(*self.args),
                beam.pvalue.AsList(counts),
                beam.pvalue.AsList(shards),
                beam.pvalue.AsDict(groups),
                beam.pvalue.AsMultiMap(keyed),
                beam.pvalue.AsList(tasks),
            )
        )
