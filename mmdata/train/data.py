"""Stream instruction shards for training: deterministic, split by node and worker, resumable.

The stream is built from `webdataset`'s tar readers (local paths, URLs, `pipe:` commands) and is fully
determined by the seed:

    epoch e: shard list shuffled with (seed, e); node r, worker w take shards[g::G]  (g = r*W + w)
      -> samples (raw bytes) -> task mixture by acceptance sampling -> shuffle buffer
      -> decode + resize -> batches of `batch_size`

Every step is seeded by (seed, epoch, g), so the n-th sample a worker emits in an epoch is always the same
one. A worker's position is (epoch, n); each batch carries it, `ResumableLoader` records the positions of
the batches the training loop actually consumed, and a restarted loader skips each worker to its position
(skipping reads tar bytes but decodes nothing) and rotates the worker order so batches continue in the
same order as an uninterrupted run. The stream repeats epochs forever: training is step-based.

Task mixture: a sample of task t is kept with probability (ratio_t / count_t) / max_k(ratio_k / count_k)
(counts from the manifest), so kept samples follow the ratios; tasks with ratio 0 (or absent from an
override) are not used. Mixture-skipped samples are counted.

Corrupt samples (bad json, missing or undecodable image, wrong context count) are counted and skipped with
a warning; past `max_corrupt_fraction` (after `min_corrupt_errors`) the worker raises `CorruptDataError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmdata.train.config import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
WARN_FIRST_CORRUPT = 5  # warn for the first few corrupt samples of a worker, then every...
WARN_EVERY_CORRUPT = 100  # ...100th
EMPTY_EPOCHS = 3  # a worker whose share changes every epoch stops after this many empty ones


class CorruptDataError(RuntimeError):
    """Too many corrupt samples: the data is broken, not just a few bad records."""


# -- shard lists and the manifest ----------------------------------------------------------------


def _is_dataset_root(spec: str) -> bool:
    return not spec.startswith("pipe:") and not spec.endswith(".tar") and "{" not in spec


def _gopen_beam(url: str, mode: str = "rb", bufsize: int = 8192) -> Any:
    """webdataset opener for object-store URLs through Beam's filesystems (`mmdata.io.paths`): the
    same code and credentials the pipelines wrote the dataset with (for `s3://`: boto3's usual chain,
    `AWS_ENDPOINT_URL` for S3-compatible stores). A missing object is a FileNotFoundError."""
    from mmdata.io import paths

    if not mode.startswith("r"):
        raise ValueError(f"{url}: the trainer only reads shards (mode {mode!r})")
    if not paths.exists(url):
        raise FileNotFoundError(f"{url}: no such object")
    return paths.open_read(url)


# The client library each of Beam's object-store filesystems needs (its extra: apache-beam[aws|gcp|azure]).
_SCHEME_CLIENTS = {"s3": "boto3", "gs": "google.cloud.storage", "azfs": "azure.storage.blob"}


def _beam_scheme(scheme: str) -> bool:
    """Whether Beam can read `scheme://` here: its extra's client library is installed (looked up,
    not imported: importing Beam's GCS module alone logs a warning) and Beam has the filesystem."""
    import importlib.util

    from apache_beam.io.filesystems import FileSystems

    try:
        if importlib.util.find_spec(_SCHEME_CLIENTS[scheme]) is None:
            return False
    except ModuleNotFoundError:  # a parent package (google.cloud) is missing
        return False
    try:
        FileSystems.get_filesystem(f"{scheme}://bucket/x")
    except ValueError:
        return False
    return True


def register_object_store_openers(urls: list[str]) -> None:
    """Let webdataset read the `s3://` / `gs://` / `azfs://` URLs among `urls` through Beam's
    filesystems where their extras are installed. webdataset alone has no `s3` opener (its `gs` one
    shells out to `gsutil`, kept when Beam's GCS support is not installed). Called where shards are
    resolved and again in each loader worker (a spawned worker starts with webdataset's table)."""
    import importlib

    wanted = {u.split("://", 1)[0] for u in urls if "://" in u} & set(_SCHEME_CLIENTS)
    schemes = importlib.import_module("webdataset.gopen").gopen_schemes
    for scheme in sorted(wanted):
        if schemes.get(scheme) is not _gopen_beam and _beam_scheme(scheme):
            schemes[scheme] = _gopen_beam


def _read_text(url: str) -> str:
    import webdataset as wds

    with wds.gopen(url, "rb") as f:
        return f.read().decode("utf-8")


class NoDataError(ValueError):
    """The shards yield no usable sample for this run (a user error: one line, no traceback)."""


def _names(items: list[str], limit: int = 3) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


GIVE = "give a dataset folder written by `mmdata demo`, or .tar shard paths / brace patterns"


def _read_manifest(spec: str) -> tuple[str, dict[str, Any]]:
    """(root without a trailing slash, its manifest.json) of one dataset root; every problem with the
    root or its manifest is a FileNotFoundError or ValueError that names it."""
    root = spec.rstrip("/") or "/"
    local = "://" not in root
    if local:
        path = Path(root)
        if not path.exists():
            raise FileNotFoundError(f"shards {spec!r}: no such file or folder; {GIVE}")
        if not path.is_dir():
            raise ValueError(f"shards {spec!r} is a file but not a .tar shard; {GIVE}")
        if not (path / "manifest.json").is_file():
            if (path / ".mmdata-dataset").is_file():  # the job's marker: it started, never finished
                raise FileNotFoundError(
                    f"dataset {spec!r} is incomplete: the job writing it did not finish (no "
                    "manifest.json); run it again to complete it"
                )
            tars = len(list(path.glob("*.tar")))
            hint = f" (it holds {tars} .tar file(s): pass them as paths)" if tars else ""
            raise FileNotFoundError(
                f"{spec!r} is not an mmdata dataset (no manifest.json there){hint}: {GIVE}"
            )
    try:
        text = _read_text(f"{root}/manifest.json")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{spec!r} is not an mmdata dataset (no manifest.json there): {GIVE}"
        ) from None
    try:
        m = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{root}/manifest.json is not valid JSON ({e})") from None
    if not isinstance(m, dict) or not isinstance(m.get("shards", []), list):
        raise ValueError(f"{root}/manifest.json is not an mmdata manifest (no list of shards)")
    if m.get("job") == "ingest":
        raise ValueError(
            f"{spec!r} holds image-text pairs written by `mmdata ingest`, not instruction "
            "samples; train on a dataset written by `mmdata demo` (which builds them)"
        )
    for s in m.get("shards", []):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise ValueError(f"{root}/manifest.json: a shard entry without a name: {s!r:.80}")
        s["url"] = f"{root}/{s['name']}"
    check_manifest_fields(m, f"{root}/manifest.json")
    if local:
        _check_shard_files(spec, m)
    return root, m


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _ratio(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def check_manifest_fields(m: dict[str, Any], name: str) -> None:
    """The fields the trainer reads have the types a job writes: `shards[i].samples` and `.bytes`
    non-negative integers, `tasks` task -> non-negative integer, `mixture` task -> non-negative
    number (either may be absent or null); else a ValueError naming the file `name` and the field."""

    def bad(field: str, value: Any, want: str) -> ValueError:
        return ValueError(
            f"{name}: {field} is {json.dumps(value, default=str)[:80]}, not {want} (a damaged or "
            "hand-edited manifest? rewrite it, or rerun the job that wrote the dataset)"
        )

    for i, s in enumerate(m.get("shards") or []):
        for key in ("samples", "bytes"):
            if key in s and not _count(s[key]):
                raise bad(f"shards[{i}].{key}", s[key], "a non-negative integer")
    for key, ok, want, wants in (
        ("tasks", _count, "a non-negative integer", "non-negative integers"),
        ("mixture", _ratio, "a non-negative number", "non-negative numbers"),
    ):
        value = m.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise bad(key, value, f"a mapping of task names to {wants}")
        for task, v in value.items():
            if not ok(v):
                raise bad(f"{key}[{json.dumps(task)}]", v, want)


# Warnings about the data already given in this process: `resolve_shards` runs more than once per
# run (the command line checks the shards before building the model, the loader resolves them again)
_WARNED: set[tuple[Any, ...]] = set()


def _warn_once(msg: str, *args: Any) -> None:
    if (msg, *args) not in _WARNED:
        _WARNED.add((msg, *args))
        log.warning(msg, *args)


def _check_shard_files(spec: str, m: dict[str, Any]) -> None:
    """Shards the manifest lists must be there (an error); a size other than the manifest's is a
    warning (the samples a short shard lacks are counted as training reads it)."""
    listed = [s for s in m.get("shards", []) if s.get("samples", 1) > 0]
    missing = [s["name"] for s in listed if not Path(s["url"]).is_file()]
    if missing:
        raise FileNotFoundError(
            f"dataset {spec!r}: {len(missing)} of the {len(listed)} shard(s) its manifest.json "
            f"lists are missing: {_names(missing)} (an incomplete copy? copy them, or rerun the job)"
        )
    resized = [
        s["name"]
        for s in listed
        if isinstance(s.get("bytes"), int) and Path(s["url"]).stat().st_size != s["bytes"]
    ]
    if resized:
        _warn_once(
            "dataset %r: %d shard(s) differ in size from its manifest.json (truncated or rewritten "
            "since?): %s",
            spec,
            len(resized),
            _names(resized),
        )


def _is_natural(m: dict[str, Any]) -> bool:
    """The manifest's mixture is the data's own task proportions (what a job writes by default)."""
    counts, mixture = m.get("tasks") or {}, m.get("mixture") or {}
    total = sum(counts.values())
    if not mixture:
        return True
    return bool(total) and all(
        abs(mixture.get(t, 0.0) - counts.get(t, 0) / total) < 1e-5 for t in {*counts, *mixture}
    )


def _normalised(mixture: dict[str, float]) -> dict[str, float]:
    total = sum(mixture.values())
    return {t: round(v / total, 6) for t, v in sorted(mixture.items()) if v > 0} if total else {}


def _is_empty(m: dict[str, Any]) -> bool:
    """A dataset root whose manifest records no sample (a job that kept nothing)."""
    return not any((m.get("tasks") or {}).values()) and all(
        s.get("samples", 1) == 0 for s in m.get("shards") or []
    )


def combine_manifests(parts: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One manifest for several dataset roots: shards of all, task counts summed, and one mixture.

    The mixture: the data's proportions when every root's mixture is its own proportions (the
    default a job writes), the common mixture when all roots have the same one; otherwise there is
    none, and `mixture_conflict` says why (training then needs `data.mixture`). Roots of different
    formats, or some with task counts and some without, are an error.
    """
    empty = [root for root, m in parts if _is_empty(m)]
    if empty and len(empty) < len(parts):
        _warn_once(
            "dataset root(s) %s hold no samples (their manifest.json lists none): skipped",
            _names(empty),
        )
        parts = [(root, m) for root, m in parts if not _is_empty(m)]
    if len(parts) == 1:
        return parts[0][1]
    formats = {m["format"] for _, m in parts if m.get("format")}
    if len(formats) > 1:
        raise ValueError(
            "the dataset roots have different formats: "
            + ", ".join(f"{root}: {m.get('format')}" for root, m in parts)
        )
    without = [root for root, m in parts if not m.get("tasks")]
    if without and len(without) < len(parts):
        raise ValueError(
            f"dataset root(s) {_names(without)} have no task counts in their manifest.json and the "
            "others do: the task mixture cannot be combined; train on them separately, or pass "
            "their .tar files with data.manifest naming one manifest for all"
        )
    counts: dict[str, int] = {}
    for _, m in parts:
        for task, n in (m.get("tasks") or {}).items():
            counts[task] = counts.get(task, 0) + n
    combined: dict[str, Any] = {
        "roots": [root for root, _ in parts],
        "shards": [s for _, m in parts for s in m.get("shards", [])],
        "tasks": counts,
    }
    if formats:
        combined["format"] = formats.pop()
    mixtures = {root: _normalised(m.get("mixture") or {}) for root, m in parts}
    total = sum(counts.values())
    if all(_is_natural(m) for _, m in parts):
        combined["mixture"] = {t: round(n / total, 6) for t, n in counts.items()} if total else {}
    elif len({json.dumps(v, sort_keys=True) for v in mixtures.values()}) == 1:
        combined["mixture"] = next(iter(mixtures.values()))
    else:
        combined["mixture"] = None
        combined["mixture_conflict"] = "the dataset roots have different task mixtures: " + (
            "; ".join(f"{root}: {mix}" for root, mix in mixtures.items())
        )
    return combined


def shard_sample_counts(manifest: dict[str, Any] | None) -> dict[str, int]:
    """Shard URL -> the number of samples its manifest records (for the short-shard check)."""
    return {
        s["url"]: s["samples"]
        for s in (manifest or {}).get("shards", [])
        if "url" in s and isinstance(s.get("samples"), int)
    }


def resolve_shards(specs: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """Expand shard specs into shard URLs; return them with the manifest of the dataset roots.

    Several roots are combined (`combine_manifests`: shards of all, task counts summed). Shards a
    local root's manifest lists must exist; local `.tar` paths must exist and be tar files. Every
    problem is a FileNotFoundError or ValueError naming the spec.

    Args:
        specs: dataset roots (folder or URL with manifest.json), `.tar` paths/URLs, brace patterns,
            or `pipe:` commands.

    Returns:
        (shard urls, manifest dict or None); the manifest's shard entries carry their `url`.
    """
    import tarfile

    import braceexpand

    urls: list[str] = []
    roots: list[tuple[str, dict[str, Any]]] = []
    files: list[str] = []
    register_object_store_openers(specs)
    for spec in specs:
        if _is_dataset_root(spec):
            root, m = _read_manifest(spec)
            roots.append((root, m))
            urls += [s["url"] for s in m.get("shards", []) if s.get("samples", 1) > 0]
        else:
            expanded = list(braceexpand.braceexpand(spec))
            local = [u for u in expanded if "://" not in u and not u.startswith("pipe:")]
            missing = [u for u in local if not Path(u).is_file()]
            if missing:
                raise FileNotFoundError(f"shard file(s) not found: {_names(missing)}")
            not_tar = [u for u in local if not tarfile.is_tarfile(u)]
            if not_tar:
                raise ValueError(f"not a tar file (not a shard): {_names(not_tar)}")
            files += expanded
            urls += expanded
    if not urls:
        raise ValueError(f"no shards found in {specs}")
    if roots and files:
        log.warning(
            "the task counts of the mixture come from the dataset roots only; the %d shard "
            "file(s) given directly are not counted (data.manifest can name a manifest for all)",
            len(files),
        )
    return urls, combine_manifests(roots) if roots else None


def acceptance_probabilities(counts: dict[str, int], mixture: dict[str, float]) -> dict[str, float]:
    """Per-task keep probability so that kept samples follow `mixture` given the data's task `counts`."""
    rates = {t: mixture.get(t, 0.0) / counts[t] for t in counts if counts[t] > 0}
    top = max(rates.values(), default=0.0)
    if top <= 0:
        raise ValueError(f"the mixture {mixture} selects none of the tasks in the data {counts}")
    return {t: r / top for t, r in rates.items()}


# -- one sample ------------------------------------------------------------------------------------


def load_image(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to (size, size, 3) uint8 RGB: EXIF-rotated, alpha over white, centre-cropped."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when possible
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = ImageOps.fit(im.convert("RGB"), (size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def _member(sample: dict[str, Any], field_name: str) -> bytes:
    data = sample.get(field_name.lower())
    if data is None:
        raise KeyError(f"member {field_name!r} missing")
    return data


def _find_target(sample: dict[str, Any], meta: dict[str, Any]) -> bytes:
    name = (meta.get("target") or {}).get("field")
    if name:
        return _member(sample, name)
    for ext in IMAGE_EXTS:
        if f"target.{ext}" in sample:
            return sample[f"target.{ext}"]
    raise KeyError("no target image")


def decode_sample(sample: dict[str, Any], image_size: int, max_context: int) -> dict[str, Any]:
    """Turn a raw webdataset sample into arrays and strings; raises on anything malformed.

    Returns a dict with `target` (3, S, S) uint8, `context` (K, 3, S, S) uint8, `context_mask` (K,)
    bool, `text` (payload instruction), `context_texts` and `context_roles` (K strings, "" on padding),
    `task`, `key`.
    """
    meta = sample["__meta__"]
    text = meta.get("instruction")
    if not isinstance(text, str):
        raise ValueError("instruction missing")
    entries = meta.get("context") or []
    if len(entries) > max_context:
        raise ValueError(f"{len(entries)} context entries > max_context {max_context}")
    target = load_image(_find_target(sample, meta), image_size).transpose(2, 0, 1)
    context = np.zeros((max_context, 3, image_size, image_size), dtype=np.uint8)
    mask = np.zeros(max_context, dtype=bool)
    texts = [""] * max_context
    roles = [""] * max_context
    for i, entry in enumerate(entries):
        context[i] = load_image(_member(sample, entry["field"]), image_size).transpose(2, 0, 1)
        mask[i] = True
        texts[i] = entry.get("text") or entry.get("marker") or ""
        roles[i] = entry.get("role") or ""
    return {
        "target": target,
        "context": context,
        "context_mask": mask,
        "text": text,
        "context_texts": texts,
        "context_roles": roles,
        "task": meta.get("task", ""),
        "key": sample["__key__"],
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "target": torch.from_numpy(np.stack([s["target"] for s in samples])),
        "context": torch.from_numpy(np.stack([s["context"] for s in samples])),
        "context_mask": torch.from_numpy(np.stack([s["context_mask"] for s in samples])),
        "text": [s["text"] for s in samples],
        "context_texts": [s["context_texts"] for s in samples],
        "context_roles": [s["context_roles"] for s in samples],
        "task": [s["task"] for s in samples],
        "key": [s["key"] for s in samples],
    }


# -- the stream ------------------------------------------------------------------------------------


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


@dataclass
class StreamCounters:
    """What one worker has read (cumulative over epochs); `short` holds the shards that had fewer
    samples than the manifest records (each counted and warned about once)."""

    read: int = 0
    corrupt: int = 0
    mixture_skipped: int = 0
    corrupt_reasons: dict[str, int] = field(default_factory=dict)
    short: set[str] = field(default_factory=set)
    eligible: int = 0  # samples of a task the mixture keeps (p > 0), in the current epoch


class ShardStream(IterableDataset):
    """An endless, seeded, resumable stream of decoded batches (one DataLoader worker per shard subset).

    Args:
        urls: shard URLs (see `resolve_shards`).
        cfg: data settings.
        batch_size: samples per batch (batches are built inside the worker).
        image_size: side of target and context images.
        seed: the run's seed.
        rank, world_size: this node's place among the training processes.
        accept: task -> keep probability (None = keep all).
        start: per logical worker (epoch, n) to resume from.
        worker_offset: rotation of logical worker ids so a resumed loader continues in order.
        repeat: loop over epochs forever (False: one pass, for evaluation).
        shuffle: shuffle shards and samples (False: file order, for evaluation).
        expected: shard URL -> samples its manifest records; a shard that yields fewer is counted
            (`short_shards`) and warned about.

    A worker whose shards hold no usable sample for this run (none of the mixture's tasks, or fewer
    shards and samples than workers) yields nothing and stops with a warning: once its epoch was
    empty when its share is the same every epoch, else after `EMPTY_EPOCHS` empty epochs in a row;
    the other workers go on. Its last item is then not a batch but `{"stopped": worker, "counters":
    ...}`, what it read (no batch carried its counts to the loader). `ResumableLoader` takes those in
    and raises `NoDataError`, with the counts, when every worker stopped.
    """

    def __init__(
        self,
        urls: list[str],
        cfg: DataConfig,
        batch_size: int,
        image_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        accept: dict[str, float] | None = None,
        start: list[tuple[int, int]] | None = None,
        worker_offset: int = 0,
        repeat: bool = True,
        shuffle: bool = True,
        expected: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.urls, self.cfg, self.batch_size, self.image_size = (
            list(urls),
            cfg,
            batch_size,
            image_size,
        )
        self.seed, self.rank, self.world_size, self.accept = seed, rank, world_size, accept
        self.start, self.worker_offset, self.repeat, self.shuffle = (
            start,
            worker_offset,
            repeat,
            shuffle,
        )
        self.expected = expected or {}

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        n = info.num_workers if info else 1
        physical = info.id if info else 0
        return (physical + self.worker_offset) % n, n

    def _raw(self, epoch: int, g: int, total: int, counters: StreamCounters) -> Iterator[dict]:
        """Raw samples of this worker for one epoch: shard split, tar reading, json parsing, mixture."""
        from webdataset.tariterators import tarfile_samples

        shards = list(self.urls)
        register_object_store_openers(shards)
        if self.shuffle:
            random.Random(_seed(self.seed, epoch, "shards")).shuffle(shards)
        by_sample = (
            len(shards) < total
        )  # too few shards to split: every worker reads all, takes 1/total
        mine = shards if by_sample else shards[g::total]

        def on_error(exn: Exception) -> bool:
            self._corrupt(counters, "unreadable_tar", exn)
            return True

        samples = tarfile_samples(({"url": u} for u in mine), handler=on_error)
        mix_rng = random.Random(_seed(self.seed, epoch, g, "mixture"))
        # every worker reads every shard when splitting by sample: one of them checks the counts
        check = bool(self.expected) and (g == 0 or not by_sample)
        got: dict[str, int] = {}
        url = None
        counters.eligible = 0
        for i, sample in enumerate(samples):
            if check:
                if sample.get("__url__") != url and url is not None:
                    self._check_count(url, got[url], counters)  # that shard is done
                url = sample.get("__url__")
                got[url] = got.get(url, 0) + 1
            if by_sample and i % total != g:
                continue
            counters.read += 1
            try:
                meta = json.loads(sample["json"])
                if not isinstance(meta, dict):
                    raise ValueError("json is not an object")
            except Exception as exn:  # noqa: BLE001 - any malformed json is a corrupt sample
                self._corrupt(counters, "bad_json", exn, sample.get("__key__"))
                continue
            p = 1.0 if self.accept is None else self.accept.get(meta.get("task", ""), 0.0)
            counters.eligible += p > 0
            if p < 1.0 and mix_rng.random() >= p:
                counters.mixture_skipped += 1
                continue
            sample["__meta__"] = meta
            yield sample
        if check:  # the last shard, and shards that gave no sample at all (unreadable)
            for u in mine:
                self._check_count(u, got.get(u, 0), counters)

    def _check_count(self, url: str, got: int, c: StreamCounters) -> None:
        want = self.expected.get(url)
        if want is None or got >= want or url in c.short:
            return
        c.short.add(url)
        log.warning(
            "shard %s yielded %d of the %d samples its manifest records (truncated or damaged?); "
            "%d short shard(s) so far",
            url,
            got,
            want,
            len(c.short),
        )

    def _shuffled(self, items: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        size = self.cfg.shuffle_buffer if self.shuffle else 0
        buf: list[dict] = []
        for item in items:
            if size <= 1:
                yield item
                continue
            buf.append(item)
            if len(buf) >= size:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def _corrupt(
        self, c: StreamCounters, reason: str, exn: Exception, key: str | None = None
    ) -> None:
        c.corrupt += 1
        c.corrupt_reasons[reason] = c.corrupt_reasons.get(reason, 0) + 1
        if c.corrupt <= WARN_FIRST_CORRUPT or c.corrupt % WARN_EVERY_CORRUPT == 0:
            warnings.warn(
                f"skipping corrupt sample {key or '?'} ({reason}: {exn}); {c.corrupt} corrupt so far",
                stacklevel=2,
            )
        if (
            c.corrupt >= self.cfg.min_corrupt_errors
            and c.corrupt > self.cfg.max_corrupt_fraction * max(c.read, 1)
        ):
            raise CorruptDataError(
                f"{c.corrupt} corrupt samples out of {c.read} read (> {self.cfg.max_corrupt_fraction:.0%}): "
                f"{c.corrupt_reasons}"
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = self._worker()
        g, total = self.rank * num_workers + worker, self.world_size * num_workers
        epoch, skip = self.start[worker] if self.start else (0, 0)
        counters = StreamCounters()
        batch: list[dict[str, Any]] = []
        # the same share every epoch (splitting by sample, or one worker for everything)?
        fixed_share = not self.shuffle or len(self.urls) < total or total == 1
        empty = 0  # epochs in a row without a usable sample
        while True:
            n = 0
            usable = False
            rng = random.Random(_seed(self.seed, epoch, g, "buffer"))
            for sample in self._shuffled(self._raw(epoch, g, total, counters), rng):
                n += 1
                if n <= skip:
                    usable = True
                    continue  # resuming: already consumed before the restart
                try:
                    batch.append(decode_sample(sample, self.image_size, self.cfg.max_context))
                except Exception as exn:  # noqa: BLE001 - skip, count, and error out past the threshold
                    self._corrupt(counters, type(exn).__name__, exn, sample.get("__key__"))
                    continue
                usable = True
                if len(batch) == self.batch_size:
                    yield self._emit(batch, worker, epoch, n, counters)
                    batch = []
            skip = 0
            if not self.repeat:
                if batch:
                    yield self._emit(batch, worker, epoch, n, counters)
                return
            empty = 0 if usable else empty + 1
            if empty and ((fixed_share and not counters.eligible) or empty >= EMPTY_EPOCHS):
                log.warning(
                    "data worker %d of %d: no usable sample in %d epoch(s) of its shards (%d "
                    "read, %d corrupt, %d skipped by the mixture); it stops, the others go on",
                    g,
                    total,
                    empty,
                    counters.read,
                    counters.corrupt,
                    counters.mixture_skipped,
                )
                # what it read never reached the loader in a batch: tell it (not a batch)
                yield {"stopped": worker, "counters": self._counts(counters, reasons=True)}
                return
            epoch += 1

    @staticmethod
    def _emit(
        batch: list[dict], worker: int, epoch: int, n: int, c: StreamCounters
    ) -> dict[str, Any]:
        out = collate(batch)
        out["position"] = {"worker": worker, "epoch": epoch, "n": n}
        out["counters"] = ShardStream._counts(c)
        return out

    @staticmethod
    def _counts(c: StreamCounters, reasons: bool = False) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "read": c.read,
            "corrupt": c.corrupt,
            "mixture_skipped": c.mixture_skipped,
            "short_shards": len(c.short),
        }
        if reasons:
            counts["corrupt_reasons"] = dict(c.corrupt_reasons)
        return counts


class ResumableLoader:
    """A DataLoader over `ShardStream` that knows the data position of what the caller consumed.

    Args:
        urls, cfg, batch_size, image_size, seed, rank, world_size, accept, expected: as for
            `ShardStream`.
        state: a `state_dict()` of an earlier loader to continue from.

    The DataLoader asks its workers in turn (skipping those that stopped), so a resumed loader
    rotates the workers to start at the one after the last consumed batch's. When every worker has
    stopped (none has a usable sample), iterating raises `NoDataError`.
    """

    def __init__(
        self,
        urls: list[str],
        cfg: DataConfig,
        batch_size: int,
        image_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        accept: dict[str, float] | None = None,
        state: dict[str, Any] | None = None,
        pin_memory: bool = False,
        expected: dict[str, int] | None = None,
    ) -> None:
        workers = max(1, cfg.num_workers)
        self.num_workers = workers
        self.num_shards = len(urls)
        self.batches = 0
        self.next_worker = 0
        self.positions: list[tuple[int, int]] = [(0, 0)] * workers
        self.counters: list[dict[str, int]] = [{} for _ in range(workers)]
        self.corrupt_reasons: list[dict[str, int]] = [{} for _ in range(workers)]
        if state:
            if state["num_workers"] != workers or state.get("world_size", 1) != world_size:
                raise ValueError(
                    f"resuming needs the same data workers and processes as the saved run "
                    f"(saved {state['num_workers']} workers x {state.get('world_size', 1)} processes, "
                    f"now {workers} x {world_size})"
                )
            self.batches = state["batches"]
            self.positions = [tuple(p) for p in state["positions"]]
            # older states: every worker alive, so the next one follows from the batch count
            self.next_worker = state.get("next_worker", self.batches % workers)
        self.dataset = ShardStream(
            urls,
            cfg,
            batch_size,
            image_size,
            seed,
            rank,
            world_size,
            accept,
            start=self.positions,
            worker_offset=self.next_worker,
            expected=expected,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=cfg.num_workers,
            pin_memory=pin_memory,
            persistent_workers=False,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if "stopped" in batch:  # a worker without usable samples stopped: what it read
                counts = batch["counters"]
                self.corrupt_reasons[batch["stopped"]] = counts.pop("corrupt_reasons", {})
                self.counters[batch["stopped"]] = counts
                continue
            pos = batch.pop("position")
            self.positions[pos["worker"]] = (pos["epoch"], pos["n"])
            self.counters[pos["worker"]] = batch.pop("counters")
            self.batches += 1
            self.next_worker = (pos["worker"] + 1) % self.num_workers
            yield batch
        accept = self.dataset.accept
        kept = sorted(t for t, p in (accept or {}).items() if p > 0)
        seen = self.totals()
        reasons: dict[str, int] = {}
        for worker in self.corrupt_reasons:
            for reason, n in worker.items():
                reasons[reason] = reasons.get(reason, 0) + n
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        raise NoDataError(
            f"no data: none of the {self.num_workers} data worker(s) found a usable sample in the "
            f"{self.num_shards} shard(s) (over their epochs: {seen['read']} read, "
            f"{seen['corrupt']} corrupt{f' ({why})' if why else ''}, {seen['mixture_skipped']} "
            "skipped by the mixture"
            + (f"; the mixture keeps only {', '.join(kept) or 'no task'}" if accept else "")
            + "; see the warnings above): check the shards, data.mixture and data.max_context"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "num_workers": self.num_workers,
            "world_size": self.dataset.world_size,
            "positions": [list(p) for p in self.positions],
            "next_worker": self.next_worker,
        }

    def totals(self) -> dict[str, int]:
        """Samples read / corrupt / skipped by the mixture, over this process's workers."""
        keys = ("read", "corrupt", "mixture_skipped", "short_shards")
        return {k: sum(c.get(k, 0) for c in self.counters) for k in keys}


def mixture_acceptance(cfg: DataConfig, manifest: dict[str, Any] | None) -> dict[str, float] | None:
    """Keep probabilities per task from the manifest's counts and the (possibly overridden) mixture."""
    if not cfg.use_mixture:
        return None
    if cfg.mixture is None and (manifest or {}).get("mixture_conflict"):
        raise ValueError(
            f"{manifest['mixture_conflict']}; say which to train on with --mixture "
            "(data.mixture), or data.use_mixture=false to take every sample as it comes"
        )
    mixture = cfg.mixture if cfg.mixture is not None else (manifest or {}).get("mixture")
    counts = (manifest or {}).get("tasks")
    if not mixture:
        return None
    if not counts:
        log.warning("no task counts in the manifest: task mixture not applied")
        return None
    absent = sorted(t for t, r in mixture.items() if r > 0 and not counts.get(t))
    if absent:
        log.warning(
            "the task mixture names task(s) with no samples in the training data: %s; they will "
            "get no samples (the ratios of the other tasks are renormalised)",
            ", ".join(absent),
        )
    accept = acceptance_probabilities(counts, mixture)
    log.info("task mixture %s -> keep probabilities %s", mixture, accept)
    return accept


def read_manifest_file(url: str) -> dict[str, Any]:
    """The manifest `data.manifest` names (task counts and mixture for shards given as files);
    every problem with it is a FileNotFoundError or ValueError that names it."""
    try:
        text = _read_text(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"data.manifest {url}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"data.manifest {url}: is a folder, not a file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"data.manifest {url} is not a text file ({e.reason})") from None
    try:
        m = json.loads(text)
    except ValueError as e:
        raise ValueError(f"data.manifest {url} is not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ValueError(f"data.manifest {url} is not an mmdata manifest (not a JSON object)")
    if not isinstance(m.get("shards", []), list):
        raise ValueError(f"data.manifest {url}: shards is not a list")
    for s in m.get("shards", []):
        if not isinstance(s, dict):
            raise ValueError(f"data.manifest {url}: a shard entry is not an object: {s!r:.80}")
    check_manifest_fields(m, f"data.manifest {url}")
    return m


def build_loader(
    cfg: DataConfig,
    batch_size: int,
    image_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    state: dict[str, Any] | None = None,
    pin_memory: bool = False,
) -> ResumableLoader:
    """Resolve the shards (and manifest) of `cfg` and return a resumable loader over them."""
    urls, manifest = resolve_shards(cfg.shards)
    expected = shard_sample_counts(manifest)
    if cfg.manifest:
        manifest = read_manifest_file(cfg.manifest)
    accept = mixture_acceptance(cfg, manifest)
    return ResumableLoader(
        urls,
        cfg,
        batch_size,
        image_size,
        seed,
        rank,
        world_size,
        accept,
        state,
        pin_memory,
        expected,
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0
