"""Instruction-sample stages and the conversion of records to shard items."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

from mmdata.core.instructions import txt2img_sample
from mmdata.core.templates import Template
from mmdata.io.shards import ShardItem
from mmdata.records import ImageTextPair, InstructionSample, ext_for
from mmdata.transforms.stage import Stage

SAMPLE_ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("sort_key", pa.string()),
        ("sample_id", pa.string()),
        ("task", pa.string()),
        ("instruction", pa.string()),
        ("template_id", pa.string()),
        ("caption", pa.string()),
        ("n_context", pa.int32()),
        ("context_roles", pa.list_(pa.string())),
        ("target_source_key", pa.string()),
        ("target_width", pa.int32()),
        ("target_height", pa.int32()),
        ("source_keys", pa.list_(pa.string())),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
    ]
)

PAIR_ROW_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("sort_key", pa.string()),
        ("pair_key", pa.string()),
        ("caption", pa.string()),
        ("format", pa.string()),
        ("mode", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("metadata_json", pa.string()),
    ]
)


def sample_to_item(s: InstructionSample) -> ShardItem:
    """An instruction sample as a shard item (members, `<key>.json`, sidecar row)."""
    import hashlib

    members = s.members()
    target_sha = hashlib.sha256(s.target).hexdigest()
    meta = s.to_json(key="")
    meta.pop("key")
    row = {
        "sample_id": s.sample_id,
        "task": s.task,
        "instruction": s.instruction,
        "template_id": s.template_id,
        "caption": s.caption,
        "n_context": len(s.context),
        "context_roles": [c.role for c in s.context],
        "target_source_key": s.target_source_key,
        "target_width": s.target_width,
        "target_height": s.target_height,
        "source_keys": list(s.source_keys),
        "bytes": sum(len(v) for v in members.values()),
        "sha256": target_sha,
    }
    return ShardItem(
        sort_key=s.sample_id,
        members=members,
        meta=meta,
        row=row,
        digests={f"target.{ext_for(s.target_format)}": target_sha},
    )


def pair_to_item(p: ImageTextPair) -> ShardItem:
    """An image-text pair as a shard item: `<key>.<ext>`, `<key>.txt`, `<key>.json` (img2dataset-like)."""
    import json

    from mmdata.core.keys import stable_hash

    meta = p.to_dict()
    meta["pair_key"] = meta.pop("key")  # "key" is the shard key
    row = {
        "pair_key": p.key,
        "caption": p.caption,
        "format": p.format,
        "mode": p.mode,
        "width": p.width,
        "height": p.height,
        "sha256": p.sha256,
        "source": p.source,
        "url": p.url,
        "metadata_json": json.dumps(p.metadata, sort_keys=True, default=str),
    }
    ext = ext_for(p.format)
    members = {ext: p.image, "txt": p.caption.encode("utf-8")}
    # p.sha256 is the hash of exactly p.image (decode_image computes it from the bytes it keeps)
    return ShardItem(
        sort_key=stable_hash("pair", p.key),
        members=members,
        meta=meta,
        row=row,
        digests={ext: p.sha256},
    )


class BuildTxt2Img(beam.PTransform):
    """Pairs -> txt2img InstructionSamples (stage `txt2img`)."""

    def __init__(self, templates: list[Template], seed: int):
        super().__init__()
        self.templates = templates
        self.seed = seed

    def expand(self, pairs):
        templates, seed = self.templates, self.seed
        return pairs | "Txt2Img" >> Stage("txt2img", lambda p: txt2img_sample(p, templates, seed))
