"""Typed records mirroring the JSON Schemas in `schemas/`.

These are the contracts between stages and with the trainer. Each record has `to_dict()` (JSON-able;
image bytes excluded where noted) and the schemas in `schemas/` validate what is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Context roles a sample may carry (see schemas/instruction_sample.schema.json).
ROLES = ("subject", "style", "content", "edge", "depth", "mask", "neighbour")


@dataclass
class ImageTextPair:
    """An ingested image with its caption.

    Attributes:
        key: stable id derived from the source location (no dots).
        image: encoded image bytes (after ingest: validated, orientation applied, 8-bit RGB/RGBA).
        format: encoded format of `image`: "png", "jpeg" or "webp".
        caption: cleaned caption text.
        source: where the record came from (file path, tar member, manifest row), relative to the
            job's input folder (`mmdata.io.readers.source_base`).
        url: original URL when known.
        width, height: pixel size of `image`.
        sha256: hex digest of `image`.
        metadata: free metadata from the source (sidecar json, manifest columns).
    """

    key: str
    image: bytes
    format: str
    caption: str
    source: str
    url: str | None = None
    width: int = 0
    height: int = 0
    sha256: str = ""
    mode: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, with_image: bool = False) -> dict[str, Any]:
        # A shallow dict (metadata is JSON-like data that nothing mutates): `dataclasses.asdict`'s deep
        # copy was a visible part of ingest's per-record cost.
        d = {name: getattr(self, name) for name in _PAIR_FIELDS}
        d["metadata"] = dict(self.metadata)
        if not with_image:
            d.pop("image")
        return d


_PAIR_FIELDS = tuple(f.name for f in dataclasses.fields(ImageTextPair))


@dataclass
class RawRecord:
    """What a reader yields before decoding: bytes and caption as found, nothing validated."""

    key: str
    source: str
    image: bytes | None
    caption: bytes | str | None
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Set by a reader that already knows the record is bad (missing sidecar, unsafe tar member, ...).
    error: tuple[str, str] | None = None


@dataclass
class Reject:
    """A record a stage refused, with why. Every stage's inputs == kept + rejects."""

    key: str
    stage: str
    reason: str
    detail: str = ""
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ContextEntry:
    """One `(marker + text, image)` pair of a multi-modal instruction."""

    marker: str
    role: str
    text: str
    image: bytes
    format: str = "png"
    source_keys: list[str] = field(default_factory=list)


@dataclass
class InstructionSample:
    """A training example: payload instruction + ordered context + target image.

    The shard key is assigned by the shard writer (a zero-padded global index); `sample_id` is a stable
    id from the inputs (task + source keys) that orders samples deterministically before that.
    """

    sample_id: str
    task: str
    instruction: str
    template_id: str
    caption: str
    target: bytes
    target_format: str
    target_width: int
    target_height: int
    target_source_key: str
    context: list[ContextEntry] = field(default_factory=list)
    source_keys: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def members(self) -> dict[str, bytes]:
        """Tar members of this sample (without the key prefix and without the json)."""
        out = {f"target.{ext_for(self.target_format)}": self.target}
        for i, c in enumerate(self.context, start=1):
            out[f"ctx{i}.{ext_for(c.format)}"] = c.image
        return out

    def to_json(self, key: str) -> dict[str, Any]:
        """The `<key>.json` member (schemas/instruction_sample.schema.json)."""
        return {
            "key": key,
            "sample_id": self.sample_id,
            "task": self.task,
            "instruction": self.instruction,
            "template_id": self.template_id,
            "caption": self.caption,
            "target": {
                "field": f"target.{ext_for(self.target_format)}",
                "source_key": self.target_source_key,
                "width": self.target_width,
                "height": self.target_height,
            },
            "context": [
                {
                    "marker": c.marker,
                    "role": c.role,
                    "text": c.text,
                    "field": f"ctx{i}.{ext_for(c.format)}",
                    "source_keys": list(c.source_keys),
                }
                for i, c in enumerate(self.context, start=1)
            ],
            "source_keys": list(self.source_keys),
            "metadata": self.metadata,
        }


_EXT = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "webp": "webp"}


def ext_for(fmt: str) -> str:
    """File extension for an encoded image format."""
    try:
        return _EXT[fmt.lower()]
    except KeyError:
        raise ValueError(f"unsupported image format {fmt!r}") from None
