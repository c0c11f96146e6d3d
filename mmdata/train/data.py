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


class CorruptDataError(RuntimeError):
    """Too many corrupt samples: the data is broken, not just a few bad records."""


# -- shard lists and the manifest ----------------------------------------------------------------


def _is_dataset_root(spec: str) -> bool:
    return not spec.startswith("pipe:") and not spec.endswith(".tar") and "{" not in spec


def _read_text(url: str) -> str:
    import webdataset as wds

    with wds.gopen(url, "rb") as f:
        return f.read().decode("utf-8")


def resolve_shards(specs: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """Expand shard specs into shard URLs; return them with the manifest of the first dataset root.

    Args:
        specs: dataset roots (folder or URL with manifest.json), `.tar` paths/URLs, brace patterns,
            or `pipe:` commands.

    Returns:
        (shard urls, manifest dict or None).
    """
    import braceexpand

    urls: list[str] = []
    manifest = None
    for spec in specs:
        if _is_dataset_root(spec):
            root = spec.rstrip("/")
            try:
                m = json.loads(_read_text(f"{root}/manifest.json"))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{spec!r} is not an mmdata dataset (no manifest.json there): give a dataset "
                    "folder written by `mmdata demo`, or .tar shard paths / brace patterns"
                ) from None
            if m.get("job") == "ingest":
                raise ValueError(
                    f"{spec!r} holds image-text pairs written by `mmdata ingest`, not instruction "
                    "samples; train on a dataset written by `mmdata demo` (which builds them)"
                )
            manifest = manifest or m
            urls += [f"{root}/{s['name']}" for s in m.get("shards", []) if s.get("samples", 1) > 0]
        else:
            expanded = list(braceexpand.braceexpand(spec))
            local = [u for u in expanded if "://" not in u and not u.startswith("pipe:")]
            missing = [u for u in local if not Path(u).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"shard file(s) not found: {', '.join(missing[:3])}"
                    + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                )
            urls += expanded
    if not urls:
        raise ValueError(f"no shards found in {specs}")
    return urls, manifest


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
    """What one worker has read (cumulative over epochs)."""

    read: int = 0
    corrupt: int = 0
    mixture_skipped: int = 0
    corrupt_reasons: dict[str, int] = field(default_factory=dict)


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

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        n = info.num_workers if info else 1
        physical = info.id if info else 0
        return (physical + self.worker_offset) % n, n

    def _raw(self, epoch: int, g: int, total: int, counters: StreamCounters) -> Iterator[dict]:
        """Raw samples of this worker for one epoch: shard split, tar reading, json parsing, mixture."""
        from webdataset.tariterators import tarfile_samples

        shards = list(self.urls)
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
        for i, sample in enumerate(samples):
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
            if self.accept is not None:
                p = self.accept.get(meta.get("task", ""), 0.0)
                if p < 1.0 and mix_rng.random() >= p:
                    counters.mixture_skipped += 1
                    continue
            sample["__meta__"] = meta
            yield sample

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
        while True:
            n = 0
            emitted = False
            rng = random.Random(_seed(self.seed, epoch, g, "buffer"))
            for sample in self._shuffled(self._raw(epoch, g, total, counters), rng):
                n += 1
                emitted = True
                if n <= skip:
                    continue  # resuming: already consumed before the restart
                try:
                    batch.append(decode_sample(sample, self.image_size, self.cfg.max_context))
                except Exception as exn:  # noqa: BLE001 - skip, count, and error out past the threshold
                    self._corrupt(counters, type(exn).__name__, exn, sample.get("__key__"))
                    continue
                if len(batch) == self.batch_size:
                    yield self._emit(batch, worker, epoch, n, counters)
                    batch = []
            skip = 0
            if not self.repeat:
                if batch:
                    yield self._emit(batch, worker, epoch, n, counters)
                return
            if not emitted:
                raise CorruptDataError(
                    f"worker {g} of {total} got no usable samples in epoch {epoch} "
                    f"({counters.read} read, {counters.corrupt} corrupt, "
                    f"{counters.mixture_skipped} skipped by the mixture)"
                )
            epoch += 1

    @staticmethod
    def _emit(
        batch: list[dict], worker: int, epoch: int, n: int, c: StreamCounters
    ) -> dict[str, Any]:
        out = collate(batch)
        out["position"] = {"worker": worker, "epoch": epoch, "n": n}
        out["counters"] = {
            "read": c.read,
            "corrupt": c.corrupt,
            "mixture_skipped": c.mixture_skipped,
        }
        return out


class ResumableLoader:
    """A DataLoader over `ShardStream` that knows the data position of what the caller consumed.

    Args:
        urls, cfg, batch_size, image_size, seed, rank, world_size, accept: as for `ShardStream`.
        state: a `state_dict()` of an earlier loader to continue from.
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
    ) -> None:
        workers = max(1, cfg.num_workers)
        self.num_workers = workers
        self.batches = 0
        self.positions: list[tuple[int, int]] = [(0, 0)] * workers
        self.counters: list[dict[str, int]] = [{} for _ in range(workers)]
        if state:
            if state["num_workers"] != workers or state.get("world_size", 1) != world_size:
                raise ValueError(
                    f"resuming needs the same data workers and processes as the saved run "
                    f"(saved {state['num_workers']} workers x {state.get('world_size', 1)} processes, "
                    f"now {workers} x {world_size})"
                )
            self.batches = state["batches"]
            self.positions = [tuple(p) for p in state["positions"]]
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
            worker_offset=self.batches % workers,
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
            pos = batch.pop("position")
            self.positions[pos["worker"]] = (pos["epoch"], pos["n"])
            self.counters[pos["worker"]] = batch.pop("counters")
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "num_workers": self.num_workers,
            "world_size": self.dataset.world_size,
            "positions": [list(p) for p in self.positions],
        }

    def totals(self) -> dict[str, int]:
        """Samples read / corrupt / skipped by the mixture, over this process's workers."""
        keys = ("read", "corrupt", "mixture_skipped")
        return {k: sum(c.get(k, 0) for c in self.counters) for k in keys}


def mixture_acceptance(cfg: DataConfig, manifest: dict[str, Any] | None) -> dict[str, float] | None:
    """Keep probabilities per task from the manifest's counts and the (possibly overridden) mixture."""
    if not cfg.use_mixture:
        return None
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
    if cfg.manifest:
        manifest = json.loads(_read_text(cfg.manifest))
    accept = mixture_acceptance(cfg, manifest)
    return ResumableLoader(
        urls, cfg, batch_size, image_size, seed, rank, world_size, accept, state, pin_memory
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0
