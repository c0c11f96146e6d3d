"""Ingest: raw records -> checked image-text pairs; duplicate keys -> rejects."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from mmdata.config import IngestConfig
from mmdata.core.caption import clean_caption
from mmdata.core.image import decode_image
from mmdata.core.jsonvalues import json_safe
from mmdata.core.reasons import Reason
from mmdata.records import ImageTextPair, RawRecord, Reject
from mmdata.transforms.stage import Stage, TallyingDoFn, split_outputs


def raw_to_pair(rec: RawRecord, cfg: IngestConfig) -> ImageTextPair | Reason:
    """Decode + check one raw record (pure; see mmdata/core/image.py and caption.py for the rules)."""
    if rec.error:
        return Reason(*rec.error)
    img = decode_image(
        rec.image,
        cfg.max_file_bytes,
        cfg.max_pixels,
        cfg.max_side,
        reduced_jpeg_check=not cfg.full_jpeg_decode,
    )
    if isinstance(img, Reason):
        return img
    caption = clean_caption(rec.caption, cfg.max_caption_chars)
    if isinstance(caption, Reason):
        return caption
    # strict JSON for the shards' `<key>.json` (a sidecar's NaN, a column's bytes): one rule for every
    # reader, see mmdata/core/jsonvalues.py
    meta = json_safe(rec.metadata)
    if img.reencoded:
        meta["original_format"] = img.original_format
        meta["original_mode"] = img.original_mode
    return ImageTextPair(
        key=rec.key,
        image=img.data,
        format=img.format,
        caption=caption,
        source=rec.source,
        url=rec.url,
        width=img.width,
        height=img.height,
        sha256=img.sha256,
        mode=img.mode,
        metadata=meta,
    )


def _losers(element: tuple[str, list[tuple[str, str]]]) -> Iterator[tuple[tuple[str, str], str]]:
    """(key, [(source, sha256)]) -> ((key, source), winner source) for every record but the first."""
    key, ids = element
    ids = sorted(ids)
    for source, _ in ids[1:]:
        yield (key, source), ids[0][0]


class _MarkDuplicatesFn(TallyingDoFn):
    """Pairs whose (key, source) lost to another record with the same key become `duplicate_key` rejects."""

    stage = "unique_keys"

    def __init__(self) -> None:
        self._cache: tuple[int, dict] | None = None

    def process(self, pair: ImageTextPair, losers: list) -> Iterator:
        if self._cache is None or self._cache[0] != id(losers):
            self._cache = (id(losers), dict(losers))
        winner = self._cache[1].get((pair.key, pair.source))
        self.tally("input")
        if winner is None:
            self.tally("kept")
            yield pair
        else:
            self.tally("rej:duplicate_key")
            yield Reject(
                key=pair.key,
                stage="unique_keys",
                reason="duplicate_key",
                detail=f"key also used by {winner}",
                source=pair.source,
            )


class Ingest(beam.PTransform):
    """RawRecords -> {"kept": ImageTextPairs, "rejects": Rejects, "counts": [(stage, counts)]}.

    Two stages: `ingest` (decode, normalise, caption rules) and `unique_keys` (one record per key).
    """

    def __init__(self, cfg: IngestConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, raw):
        cfg = self.cfg
        decoded = raw | "Decode" >> Stage("ingest", lambda r: raw_to_pair(r, cfg))
        pairs = decoded["kept"]
        # Only (key, source, sha256) are shuffled to find duplicates; the image bytes never are.
        losers = (
            pairs
            | "Ids" >> beam.Map(lambda p: (p.key, (p.source, p.sha256)))
            | "GroupKey" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(_losers)
        )
        uniq, dups, unique_counts = split_outputs(
            pairs | "Unique" >> beam.ParDo(_MarkDuplicatesFn(), beam.pvalue.AsList(losers))
        )
        counts = (decoded["counts"], unique_counts) | "FlattenCounts" >> beam.Flatten()
        rejects = (decoded["rejects"], dups) | "FlattenRejects" >> beam.Flatten()
        return {"kept": uniq, "rejects": rejects, "counts": counts}
