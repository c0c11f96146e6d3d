"""The shard sink: deterministic WebDataset tars with same-stem Parquet sidecars.

Every stage writes its output with `WriteShards`. The contract:
- Items carry a `sort_key` (a stable hash of their identity). All items are ordered by it; item i of that order
  gets key `shard_key(i)` (9 zero-padded digits, no dots) and goes to shard `NNNNN.tar`, filled in order up to
  `maxcount` samples or `maxsize` bytes.
- Members are `<key>.<field>.<ext>` (e.g. `000000123.target.png`) plus `<key>.json`, written by
  `webdataset.TarWriter` with sorted members, a fixed mtime, uid/gid names and mode, so the same items give the
  same bytes on every runner.
- A shard is written under a temporary name and renamed when complete; its `.parquet` (one row per sample, and
  the tar's sha256 and size in the Parquet key-value metadata) is renamed last, so a visible `.parquet` means
  the shard is complete. A rerun skips a shard only when its content would be identical: the sidecar's
  metadata holds a digest of the shard's expected content (`content_digest`: every sample's key, sort_key,
  `<key>.json`, sidecar row and members' sha256), which must equal the digest of this run's items, and the
  tar on disk must still hash to the sha256 the sidecar recorded (so a changed caption or image, or a shard
  damaged in place, is rewritten). Checking a kept shard costs one streamed read of its tar.

Planning needs one global step over (sort_key, size) pairs only (no image bytes): the plan is a short list of
shard boundaries, passed to the writers as a side input. The step reads the pairs grouped by the first
`PLAN_PREFIX` characters of their keys (a multimap side input), one group at a time in key order, so the
worker that plans holds one group, not every pair of the dataset (a plain `ToList` of 100 M pairs would be
about 17 GB on one worker).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from mmdata.core.keys import shard_key, shard_name
from mmdata.io.paths import join, list_names, open_read, open_write, write_bytes
from mmdata.io.sourcebytes import is_local
from mmdata.io.wds_writer import tarwriter

log = logging.getLogger(__name__)

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z
META_SHA = b"mmdata.tar_sha256"
META_BYTES = b"mmdata.tar_bytes"
META_CONTENT = b"mmdata.content_sha256"
# Bumped when what a shard's bytes depend on changes beyond its items (the encoding), so old shards are
# rewritten rather than kept.
CONTENT_VERSION = b"mmdata-shard-content-v1"


TAR_BLOCK = 512
_KEY_ROOM = 32  # what `"key": "<shard key>"` adds to a sample's `<key>.json`, at most


def _tar_entry(n: int) -> int:
    """Bytes of an n-byte tar member: its header block and its data padded to whole blocks."""
    return TAR_BLOCK + -(-n // TAR_BLOCK) * TAR_BLOCK


@dataclass
class ShardItem:
    """One sample to write.

    Attributes:
        sort_key: stable, unique ordering key (hex hash of the sample's identity).
        members: `field.ext` -> bytes (e.g. {"target.png": ..., "ctx1.png": ...}).
        meta: the `<key>.json` member; "key" is added by the writer.
        row: the Parquet sidecar row; "key" and "shard" are added by the writer.
        digests: sha256 (hex) of members whose hash the producer already computed from exactly
            those bytes (a checked pair's image), so the content digest does not hash them again.
    """

    sort_key: str
    members: dict[str, bytes]
    meta: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """The item's bytes in its shard's tar: each member (and the `<key>.json`, whose key adds at
        most `_KEY_ROOM` characters) is a 512-byte header plus its data padded to 512 bytes, which
        for small samples (an icon, a caption) is most of their size."""
        meta = len(json.dumps(self.meta, sort_keys=True)) + _KEY_ROOM
        return sum(_tar_entry(len(v)) for v in self.members.values()) + _tar_entry(meta)


@dataclass
class ShardInfo:
    name: str
    parquet: str
    samples: int
    bytes: int
    sha256: str
    skipped: bool = False

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parquet": self.parquet,
            "samples": self.samples,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


def plan_shards(
    sizes: list[tuple[str, int]], maxcount: int, maxsize: int
) -> list[tuple[str, int, int]]:
    """Cut the sorted items into shards.

    Args:
        sizes: (sort_key, nbytes) of every item, any order.
        maxcount, maxsize: shard limits (an item larger than maxsize gets a shard of its own).

    Returns:
        One (first sort_key, first global index, count) per shard.
    """
    return plan_sorted_chunks([sorted(sizes)], maxcount, maxsize)


def plan_sorted_chunks(
    chunks: Iterable[list[tuple[str, int]]], maxcount: int, maxsize: int
) -> list[tuple[str, int, int]]:
    """`plan_shards` over items given as consecutive chunks, each sorted, every key of a chunk below
    every key of the next: only one chunk needs to be in memory at a time."""
    plan: list[tuple[str, int, int]] = []
    first: str | None = None
    start = count = size = index = 0
    previous: str | None = None
    for chunk in chunks:
        for key, nbytes in chunk:
            if key == previous:
                raise ValueError(f"duplicate sort_key {key!r}: two samples have the same identity")
            previous = key
            if count and (count >= maxcount or size + nbytes > maxsize):
                plan.append((first, start, count))
                start, count, size = index, 0, 0
            if count == 0:
                first = key
            count += 1
            size += nbytes
            index += 1
    if count:
        plan.append((first, start, count))
    return plan


# Planning reads the (sort_key, nbytes) pairs grouped by this many leading characters of the key, one
# group at a time, so no worker holds all of them: 256 groups for hex keys (100 M samples: ~400 k a group).
PLAN_PREFIX = 2


class _PlanFn(beam.DoFn):
    """The shard plan, from the pairs grouped by key prefix (a multimap side input) walked in order."""

    def __init__(self, maxcount: int, maxsize: int):
        self.maxcount = maxcount
        self.maxsize = maxsize

    def process(self, _: Any, prefixes: dict[str, int], by_prefix: Any) -> Iterator[list]:
        chunks = (sorted(by_prefix[p]) for p in sorted(prefixes))
        yield plan_sorted_chunks(chunks, self.maxcount, self.maxsize)


def shard_for(
    sort_key: str, plan: list[tuple[str, int, int]], firsts: list[str] | None = None
) -> int:
    """The plan's shard for `sort_key`; `firsts` (every shard's first key, `[p[0] for p in plan]`)
    saves rebuilding that list per call (a 100 M-sample dataset has ~100 k shards)."""
    if firsts is None:
        firsts = [p[0] for p in plan]
    return bisect.bisect_right(firsts, sort_key) - 1


class _AssignFn(beam.DoFn):
    """item -> (shard index, item); the plan's first keys are listed once per plan, not per item."""

    def __init__(self) -> None:
        self._firsts: tuple[int, list[str]] | None = None

    def process(self, item: ShardItem, plan: list[tuple[str, int, int]]) -> Iterator[tuple]:
        if self._firsts is None or self._firsts[0] != id(plan):
            self._firsts = (id(plan), [p[0] for p in plan])
        yield shard_for(item.sort_key, plan, self._firsts[1]), item


def write_tar(samples: list[tuple[str, ShardItem]], fileobj: IO[bytes]) -> None:
    """Write the tar of (key, item) samples to `fileobj`, deterministic (streamed: the tar is never
    held in memory whole)."""
    with tarwriter()(
        fileobj, encoder=False, mtime=FIXED_MTIME, user="mmdata", group="mmdata"
    ) as tw:
        for key, item in samples:
            meta = {**item.meta, "key": key}
            sample: dict[str, Any] = {
                "__key__": key,
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
            for name, data in item.members.items():
                if name == "json" or "/" in name:
                    raise ValueError(f"bad member field {name!r}")
                sample[name] = data
            tw.write(sample)


def encode_tar(samples: list[tuple[str, ShardItem]]) -> bytes:
    """The tar bytes of (key, item) samples, deterministic."""
    buf = io.BytesIO()
    write_tar(samples, buf)
    return buf.getvalue()


class _Hashing:
    """A write-only file that passes bytes on to `f` and keeps their sha256 and count."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.nbytes += len(data)
        self.f.write(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()


def _json_bytes(value: Any) -> bytes:
    # default=repr: sidecar rows may hold values JSON has no form for (bytes); the digest only needs a
    # stable, distinguishing encoding, not a readable one
    return json.dumps(value, sort_keys=True, default=repr).encode()


def content_digest(samples: list[tuple[str, ShardItem]], shard: str) -> str:
    """sha256 of everything a shard's tar and sidecar rows are made from: for each (key, item) in order,
    the key, sort_key, `<key>.json` meta, sidecar row and each member's name and sha256 (image bytes are
    hashed, not re-encoded; an item's `digests` stand for the hashes they list). Equal digests mean the
    same shard bytes (for one mmdata version)."""
    h = hashlib.sha256(CONTENT_VERSION)
    h.update(b"\0" + shard.encode())
    for key, item in samples:
        parts = [
            key.encode(),
            item.sort_key.encode(),
            _json_bytes({**item.meta, "key": key}),
            _json_bytes(item.row),
        ]
        for name in sorted(item.members):
            sha = item.digests.get(name) or hashlib.sha256(item.members[name]).hexdigest()
            parts += [name.encode(), sha.encode()]
        for part in parts:
            h.update(len(part).to_bytes(8, "big") + part)
        h.update(b"\1")
    return h.hexdigest()


def _file_sha256(path: str) -> str | None:
    """sha256 of a file as stored (streamed), or None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open_read(path) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except Exception:  # noqa: BLE001 - an unreadable tar means: rewrite the shard
        return None
    return h.hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    """A temporary name renamed when complete (local); a single upload, which an object store shows only
    once complete, for `scheme://` paths (there a rename is a copy and a delete)."""
    write_bytes(path, data)


def _parquet_bytes(table: pa.Table, meta: dict[bytes, bytes]) -> bytes:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


MANIFEST = "manifest.json"


def withdraw_manifest(output: str) -> None:
    """Remove the dataset's `manifest.json` before the first change to its shards: a run that stops
    after rewriting some shards (killed, failed) must not leave the previous run's manifest listing
    shards, sample counts and sha256 that are no longer on disk. The folder stays an mmdata dataset
    (its `.mmdata-dataset` marker), and the run that completes writes the manifest anew."""
    path = f"{output.rstrip('/')}/{MANIFEST}"
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
            log.info("%s: the previous manifest.json was removed before shards change", output)
    except Exception as e:  # noqa: BLE001 - another worker removed it first
        if FileSystems.exists(path):
            raise RuntimeError(f"could not remove {path} before rewriting shards: {e}") from e


def read_sidecar(path: str) -> tuple[list[str], dict[bytes, bytes]] | None:
    """(sample_ids in order, key-value metadata) of a shard's parquet, or None if absent/unreadable."""
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path) as f:
            table = pq.read_table(io.BytesIO(f.read()), columns=["sort_key"])
        return table.column("sort_key").to_pylist(), dict(table.schema.metadata or {})
    except Exception:  # noqa: BLE001 - an unreadable sidecar means: rewrite the shard
        return None


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, schema: pa.Schema | None, overwrite: bool):
        self.output = output.rstrip("/")
        self.schema = schema
        self.overwrite = overwrite
        self._withdrawn = False  # this worker removed the old manifest.json (once is enough)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_withdrawn": False}  # per worker, not carried by the pickled DoFn

    @staticmethod
    def _complete(
        tar_path: str, pq_path: str, expected: list[str], digest: str
    ) -> tuple[str, int] | None:
        """(sha256, bytes) of the shard on disk if it can be kept as it is: its sidecar lists the expected
        samples and records this run's content digest (a sidecar from before digests were recorded never
        matches), and the tar has the recorded size and sha256 (one streamed read)."""
        existing = read_sidecar(pq_path)
        if not existing or existing[0] != expected:
            return None
        meta = existing[1]
        if meta.get(META_CONTENT, b"").decode() != digest:
            return None
        sha = meta.get(META_SHA, b"").decode()
        try:
            nbytes = int(meta.get(META_BYTES, b"0"))
        except ValueError:
            return None
        if not sha or not FileSystems.exists(tar_path):
            return None
        sizes = FileSystems.match([tar_path])[0].metadata_list
        if not sizes or sizes[0].size_in_bytes != nbytes or _file_sha256(tar_path) != sha:
            return None
        return sha, nbytes

    def process(self, element, plan) -> Iterator[ShardInfo]:
        idx, items = element
        first, start, count = plan[idx]
        items = sorted(items, key=lambda it: it.sort_key)
        if len(items) != count or items[0].sort_key != first:
            raise RuntimeError(f"shard {idx}: planned {count} items from {first}, got {len(items)}")
        name = shard_name(idx)
        tar_path = f"{self.output}/{name}.tar"
        pq_path = f"{self.output}/{name}.parquet"
        expected = [it.sort_key for it in items]
        keyed = [(shard_key(start + i), it) for i, it in enumerate(items)]
        digest = content_digest(keyed, f"{name}.tar")
        if not self.overwrite and (kept := self._complete(tar_path, pq_path, expected, digest)):
            sha, nbytes = kept
            beam.metrics.Metrics.counter("shards", "skipped_complete").inc()
            yield ShardInfo(f"{name}.tar", f"{name}.parquet", count, nbytes, sha, skipped=True)
            return
        rows = [
            {"key": k, "shard": f"{name}.tar", "sort_key": it.sort_key, **it.row} for k, it in keyed
        ]
        table = pa.Table.from_pylist(rows, schema=self.schema)  # rows that do not fit fail here,
        # before anything on disk changes
        if not self._withdrawn:
            withdraw_manifest(self.output)
            self._withdrawn = True
        if FileSystems.exists(
            pq_path
        ):  # stale sidecar first: an old .parquet must never vouch for a new tar
            FileSystems.delete([pq_path])
        # the tar is streamed to its temporary name (hashed on the way), not built in memory first: a
        # 512 MB shard would otherwise need twice its size again while it is written
        with open_write(tar_path) as f:
            out = _Hashing(f)
            write_tar(keyed, out)
        sha, nbytes = out.sha.hexdigest(), out.nbytes
        meta = {
            META_SHA: sha.encode(),
            META_BYTES: str(nbytes).encode(),
            META_CONTENT: digest.encode(),
        }
        _write_atomic(pq_path, _parquet_bytes(table, meta))
        beam.metrics.Metrics.counter("shards", "written").inc()
        beam.metrics.Metrics.counter("shards", "samples").inc(count)
        yield ShardInfo(f"{name}.tar", f"{name}.parquet", count, nbytes, sha)


class WriteShards(beam.PTransform):
    """ShardItems -> shards under `output`; returns a PCollection of ShardInfo (one per shard).

    Args:
        output: dataset folder (any Beam filesystem path).
        maxcount, maxsize: shard limits.
        schema: optional pyarrow schema of the sidecar rows (key, shard, sort_key + the items' rows).
        overwrite: rewrite shards even when an identical complete one exists.
    """

    def __init__(
        self,
        output: str,
        maxcount: int = 1000,
        maxsize: int = 512 << 20,
        schema: pa.Schema | None = None,
        overwrite: bool = False,
    ):
        super().__init__()
        self.output = output
        self.maxcount = maxcount
        self.maxsize = maxsize
        self.schema = schema
        self.overwrite = overwrite

    def expand(self, items):
        # One global step over (sort_key, size) pairs, read a key-prefix group at a time (no worker
        # holds them all); the workers get only the plan (one entry per shard), so the side input
        # stays small however many samples there are.
        sizes = items | "Sizes" >> beam.Map(
            lambda it: (it.sort_key[:PLAN_PREFIX], (it.sort_key, it.nbytes))
        )
        prefixes = sizes | "Prefixes" >> beam.combiners.Count.PerKey()
        plan = (
            items.pipeline
            | "PlanOnce" >> beam.Create([None])
            | "Plan"
            >> beam.ParDo(
                _PlanFn(self.maxcount, self.maxsize),
                beam.pvalue.AsDict(prefixes),
                beam.pvalue.AsMultiMap(sizes),
            )
        )
        plan_side = beam.pvalue.AsSingleton(plan)
        return (
            items
            | "Assign" >> beam.ParDo(_AssignFn(), plan_side)
            | "GroupShard" >> beam.GroupByKey()
            | "Write"
            >> beam.ParDo(_WriteShardFn(self.output, self.schema, self.overwrite), plan_side)
        )


OUTPUT_MARKER = ".mmdata-dataset"


def _source_folder(source: str, kind: str) -> str | None:
    """The folder whose files a job reads: a folder input, or the folder of `.tar` shards (a folder, a
    glob or one file). None for manifests, whose rows may point anywhere. Local folders are absolute with
    symlinks resolved (`os.path.realpath`); `scheme://` prefixes are as given, without a trailing slash."""
    if kind == "manifest":
        return None
    if not is_local(source):
        src = source.rstrip("/")
        if kind == "webdataset" or src.endswith(".tar") or "*" in src:
            return src.rsplit("/", 1)[0]
        return src if "." not in src.rsplit("/", 1)[-1] else None
    if os.path.isdir(source):
        return os.path.realpath(source)
    if kind == "webdataset" or source.endswith(".tar"):
        return os.path.realpath(os.path.dirname(source) or ".")
    return None


def prepare_output(output: str, source: str | None = None, source_kind: str = "auto") -> bool:
    """Check a job's output folder before anything runs, and mark it as an mmdata dataset. Returns
    whether this call wrote the `.mmdata-dataset` marker (False: the folder already had one).

    Refused with a `ValueError`: an output that is an existing file; an existing folder that holds files
    but is not an mmdata dataset (no `manifest.json` and no `.mmdata-dataset` marker), since the job
    replaces shard-named files there; an output in or inside the folder a source reads (a folder, or
    the folder of `.tar` shards given as a folder, glob or file), also through symlinks (local paths
    are compared resolved): the job would replace its own input or the next run would read its shards
    as input. The same checks hold for object-store outputs
    (`gs://`, `s3://`: a prefix), through Beam's filesystems; call `mmdata.io.paths.use_options`
    first there, so they reach the store the job will write to.
    """
    local = is_local(output)
    out = os.path.abspath(output) if local else output.rstrip("/")
    sep = os.sep if local else "/"
    if local and os.path.isfile(out):
        raise ValueError(
            f"output {output!r} is a file; give a folder (new, empty or an mmdata dataset)"
        )
    src = None
    if source and is_local(source) == local:
        src = _source_folder(source, source_kind)
    # local paths are compared with symlinks resolved: a linked input (or output) is the same folder
    real = os.path.realpath(out) if local else out
    if src and (real == src or real.startswith(src.rstrip(sep) + sep)):
        raise ValueError(
            f"output {output!r} is inside the input folder {source!r}: the job would replace or "
            "the next run would read its own shards as input; write the dataset somewhere else"
        )
    if local:
        entries = set(os.listdir(out)) if os.path.isdir(out) else set()
    else:
        entries = list_names(out)
        if not entries and FileSystems.exists(out):
            raise ValueError(
                f"output {output!r} is an object, not a folder (prefix); give a new prefix or an "
                "mmdata dataset"
            )
    if entries and not entries & {"manifest.json", OUTPUT_MARKER}:
        raise ValueError(
            f"output folder {output!r} holds files but is not an mmdata dataset (no manifest.json); "
            "the job would replace shard-named files there: give a new or empty folder"
        )
    if local:
        os.makedirs(out, exist_ok=True)
    if OUTPUT_MARKER in entries:
        return False
    write_bytes(
        join(out, OUTPUT_MARKER),
        b"An mmdata dataset folder (shards, manifest.json, rejects.parquet).\n",
        mime_type="text/plain",
    )
    return True


@contextlib.contextmanager
def claimed_output(
    output: str, source: str | None = None, source_kind: str = "auto"
) -> Iterator[None]:
    """`prepare_output`, for the job run in the body; when the body fails (any runner: a remote job
    that failed or was never accepted, an interrupt) before it wrote anything into the output, the
    marker this run wrote is removed again, and a local folder this run created too, so a failed run
    leaves no folder that claims to be a dataset. A failed run that did write files there (partial
    shards) keeps the marker: those files are mmdata's, and a rerun into the folder replaces them or
    skips the complete shards. A marker that was there before the run is never removed."""
    local = is_local(output)
    out = os.path.abspath(output) if local else output.rstrip("/")
    new_folder = local and not os.path.lexists(out)
    created = prepare_output(output, source, source_kind)
    try:
        yield
    except BaseException:
        if created:
            _release_output(out, local, new_folder)
        raise


def _release_output(out: str, local: bool, new_folder: bool) -> None:
    """Remove the marker (and a local folder made by this run) when the marker is all the folder
    holds. A failure here is logged, never raised over the job's own error."""
    try:
        names = set(os.listdir(out)) if local else list_names(out)
        if names != {OUTPUT_MARKER}:
            return
        FileSystems.delete([join(out, OUTPUT_MARKER)])
        if new_folder:
            os.rmdir(out)
        log.info("the run failed before writing to %s: its dataset marker was removed", out)
    except Exception as exc:  # noqa: BLE001 - the job's error is the one to report
        log.warning(
            "could not remove the dataset marker from %s after the failed run: %s", out, exc
        )
