"""Generate images from multi-modal instructions (the `mmdata sample` command).

An instruction file is JSON, one object or a list of them:

    {"instruction": "Render the caption following the edges of [ref#1]: a red vase",
     "context": [{"marker": "[ref#1]", "text": "[ref#1] edge map", "image": "edges.png", "role": "edge"}],
     "num_images": 4, "seed": 0}

Image paths are relative to the JSON file. As in the training data, every `[ref#N]` marker of the text
must have exactly one context entry and every entry must be referred to.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mmdata.errors import os_error_reason
from mmdata.train.data import load_image
from mmdata.train.diffusion import alphas_cumprod
from mmdata.train.loop import encode_conditioning
from mmdata.train.model import InstructUNet
from mmdata.train.sampler import sample_images
from mmdata.train.text import TextEncoder

MARKER = re.compile(r"\[ref#\d+\]")


@dataclass
class Instruction:
    text: str
    context: list[dict[str, Any]]  # marker, text, image (path), role
    num_images: int = 1
    seed: int = 0


def read_instructions(path: str | Path) -> list[Instruction]:
    """Parse and check an instruction JSON file (one object or a list); every problem is a ValueError
    naming the file and the item."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not an instruction JSON file ({e})") from None
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ValueError(
            f"{path}: holds no instructions (an empty list); give one object or a list"
        )
    out = []
    for n, item in enumerate(items):
        where = f"{path} item {n}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object with 'instruction', got {item!r:.80}")
        text = item.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: 'instruction' (text) is required")
        entries = item.get("context") or []
        if not isinstance(entries, list):
            raise ValueError(f"{where}: 'context' must be a list of entries")
        context = []
        for k, entry in enumerate(entries):
            context.append(_context_entry(entry, f"{where} context entry {k}", path))
        in_text = MARKER.findall(text)
        markers = [c["marker"] for c in context]
        if sorted(set(in_text)) != sorted(markers) or len(set(markers)) != len(markers):
            raise ValueError(
                f"{where}: markers in the text {sorted(set(in_text))} must match the context "
                f"entries {markers} one to one"
            )
        for c in context:
            if not Path(c["image"]).is_file():
                raise ValueError(f"{where}: context image {c['image']!r} not found")
        counts = {}
        for name, low in (("num_images", 1), ("seed", 0)):
            value = item.get(name, low)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{where}: {name!r} must be an integer >= {low}, got {value!r}")
            counts[name] = value
        out.append(Instruction(text, context, counts["num_images"], counts["seed"]))
    return out


def _context_entry(entry: Any, where: str, path: Path) -> dict[str, Any]:
    """One checked context entry: `marker` and `image` strings (the image's path made relative to the
    instruction file's folder), optional `text` (default: the marker) and `role` strings."""
    if not isinstance(entry, dict) or not entry.get("marker") or "image" not in entry:
        raise ValueError(f"{where}: each context entry needs 'marker' and 'image'")
    for name in ("marker", "image"):
        if not isinstance(entry[name], str) or not entry[name].strip():
            raise ValueError(
                f"{where}: {name!r} must be a non-empty string, got {entry[name]!r:.80}"
            )
    for name in ("text", "role"):  # optional; null is taken as absent
        if entry.get(name) is not None and not isinstance(entry[name], str):
            raise ValueError(f"{where}: {name!r} must be a string, got {entry[name]!r:.80}")
    image = Path(entry["image"])
    image = image if image.is_absolute() else path.parent / image
    return {**entry, "image": str(image), "text": entry.get("text") or entry["marker"]}


def _read_context_image(file: str, image_size: int) -> np.ndarray:
    """(image_size, image_size, 3) uint8 pixels of a context image, or a ValueError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return load_image(Path(file).read_bytes(), image_size)
    except Image.DecompressionBombError as e:
        # PIL: "Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be ..."
        sizes = re.findall(r"\d+", str(e))
        why = (
            f"{int(sizes[0]):,} pixels, over PIL's limit of {int(sizes[1]):,}"
            if len(sizes) >= 2
            else str(e)
        )
        raise ValueError(f"context image {file!r} is too large ({why})") from None
    except UnidentifiedImageError:  # its message names an io.BytesIO object, not the file
        raise ValueError(
            f"context image {file!r} cannot be read: not an image PIL can decode"
        ) from None
    except (OSError, ValueError) as e:
        why = os_error_reason(e) if isinstance(e, OSError) else e
        raise ValueError(f"context image {file!r} cannot be read: {why}") from None


def check_context_images(ins: Instruction, image_size: int, max_context: int) -> None:
    """Raise the ValueError `instruction_batch` would for `ins`'s context (too many entries, an
    image that cannot be read), without building the batch: before the model loads."""
    _context_arrays(ins, image_size, max_context)


def _context_arrays(
    ins: Instruction, image_size: int, max_context: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if len(ins.context) > max_context:
        raise ValueError(
            f"{len(ins.context)} context entries; this model takes at most {max_context}"
        )
    ctx = np.zeros((max_context, 3, image_size, image_size), np.uint8)
    mask = np.zeros(max_context, bool)
    texts = [""] * max_context
    for i, entry in enumerate(ins.context):
        ctx[i] = _read_context_image(entry["image"], image_size).transpose(2, 0, 1)
        mask[i] = True
        texts[i] = entry["text"]
    return ctx, mask, texts


def instruction_batch(ins: Instruction, image_size: int, max_context: int) -> dict[str, Any]:
    """A loader-style batch (one row per requested image) for one instruction."""
    ctx, mask, texts = _context_arrays(ins, image_size, max_context)
    n = ins.num_images
    return {
        "text": [ins.text] * n,
        "context": torch.from_numpy(ctx)[None].repeat(n, 1, 1, 1, 1),
        "context_mask": torch.from_numpy(mask)[None].repeat(n, 1),
        "context_texts": [texts] * n,
    }


def generate(
    model: InstructUNet,
    cfg: Any,
    text_encoder: TextEncoder,
    ins: Instruction,
    device: torch.device,
    steps: int = 50,
    text_scale: float = 3.0,
    context_scale: float = 1.5,
) -> list[Image.Image]:
    """Images for one instruction (`cfg` is the checkpoint's TrainConfig)."""
    batch = instruction_batch(ins, cfg.model.image_size, cfg.data.max_context)
    cond = encode_conditioning(batch, text_encoder, device)
    gen = torch.Generator(device).manual_seed(ins.seed)
    images = sample_images(
        model,
        cond,
        alphas_cumprod(cfg.diffusion),
        cfg.model.image_size,
        steps,
        text_scale,
        context_scale,
        generator=gen,
    )
    arr = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy()) for a in arr]
