"""Write tiny instruction shards that follow the shard contract, for the trainer's tests.

`NNNNN.tar` (webdataset.TarWriter; members `<key>.target.png`, `<key>.ctxN.png`, `<key>.json`) + same-stem
`NNNNN.parquet` + `manifest.json` + `rejects.parquet` at the dataset root. Images are drawn shapes:
a coloured circle / square / triangle on a plain background, captioned with its colour and shape, so a
model can learn something in a few steps.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageDraw, ImageFilter

from mmdata.train.config import DataConfig, ModelConfig, TextConfig, TrainConfig

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
TASK_CONTEXT = {
    "retrieval": ("neighbour", "neighbour", "neighbour"),
    "txt2img": (),
    "edge2img": ("edge",),
    "mask2img": ("mask",),
}
TEXTS = {"neighbour": "related image", "edge": "edge map", "mask": "mask"}


def draw(colour: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(200, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-3, 3), size / 2 + rng.uniform(-3, 3)
    box = [cx - r, cy - r, cx + r, cy + r]
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def control(img: Image.Image, role: str) -> Image.Image:
    if role == "edge":
        return img.convert("L").filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 20 else 0)
    if role == "mask":
        arr = np.asarray(img.convert("RGB")).astype(int)
        return Image.fromarray(((arr.max(-1) - arr.min(-1)) > 100).astype(np.uint8) * 255)
    return img


def write_dataset(
    root: Path,
    n: int = 48,
    per_shard: int = 12,
    size: int = 24,
    tasks: tuple[str, ...] = ("retrieval",),
    mixture: dict[str, float] | None = None,
    corrupt: dict[int, str] | None = None,
    seed: int = 0,
) -> Path:
    """Write `n` samples cycling through `tasks` into shards of `per_shard` samples.

    Args:
        corrupt: sample index -> kind of damage: `bad_png` (target bytes are not an image), `bad_json`,
            `missing_ctx` (json names a context member that is not in the tar).
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    corrupt = corrupt or {}
    shards: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for s in range(0, n, per_shard):
        name = f"{s // per_shard:05d}"
        rows = []
        with wds.TarWriter(str(root / f"{name}.tar"), mtime=946684800) as sink:
            for i in range(s, min(n, s + per_shard)):
                task = tasks[i % len(tasks)]
                counts[task] = counts.get(task, 0) + 1
                colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
                shape = SHAPES[int(rng.integers(len(SHAPES)))]
                target = draw(colour, shape, size, rng)
                caption = f"a {colour} {shape}"
                key = f"{i:09d}"
                sample: dict[str, Any] = {"__key__": key, "target.png": png(target)}
                context = []
                for j, role in enumerate(TASK_CONTEXT[task]):
                    marker = f"[ref#{j + 1}]"
                    img = (
                        draw(colour, shape, size, rng)
                        if role == "neighbour"
                        else control(target, role)
                    )
                    sample[f"ctx{j + 1}.png"] = png(img)
                    context.append(
                        {
                            "marker": marker,
                            "role": role,
                            "text": f"{marker} {TEXTS[role]}",
                            "field": f"ctx{j + 1}.png",
                            "source_keys": [f"src{i}-{j}"],
                        }
                    )
                markers = " ".join(c["marker"] for c in context)
                instruction = (
                    f"Generate an image using {markers}: {caption}" if context else caption
                )
                meta = {
                    "key": key,
                    "task": task,
                    "instruction": instruction,
                    "template_id": f"{task}-0",
                    "caption": caption,
                    "target": {
                        "field": "target.png",
                        "source_key": f"src{i}",
                        "width": size,
                        "height": size,
                    },
                    "context": context,
                    "source_keys": [f"src{i}"],
                    "metadata": {},
                }
                kind = corrupt.get(i)
                if kind == "bad_png":
                    sample["target.png"] = b"not a png at all"
                if kind == "missing_ctx":
                    meta["context"] = [
                        *context,
                        {
                            "marker": "[ref#9]",
                            "role": "edge",
                            "text": "[ref#9] edge map",
                            "field": "ctx9.png",
                            "source_keys": [],
                        },
                    ][-1:]
                sample["json"] = b"{not json" if kind == "bad_json" else json.dumps(meta).encode()
                sink.write(sample)
                rows.append({"key": key, "task": task, "instruction": instruction, "shard": name})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{name}.parquet")
        data = (root / f"{name}.tar").read_bytes()
        shards.append(
            {
                "name": f"{name}.tar",
                "samples": len(rows),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    mixture = mixture or {t: 1.0 / len(counts) for t in counts}
    manifest = {
        "mmdata_version": "test",
        "config": {},
        "versions": {},
        "counts": {"fixture": {"input": n, "kept": n, "rejected": {}}},
        "shards": shards,
        "tasks": counts,
        "mixture": mixture,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    pq.write_table(
        pa.Table.from_pylist([], schema=pa.schema([("key", pa.string())])), root / "rejects.parquet"
    )
    return root


def tiny_model(image_size: int = 16) -> ModelConfig:
    return ModelConfig(
        image_size=image_size,
        base_channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(1,),
        head_channels=16,
        text_dim=384,
        cond_dim=32,
    )


def tiny_config(out: Path, shards: Path, **kw) -> TrainConfig:
    data = kw.pop("data", None) or DataConfig(shards=[str(shards)], num_workers=0, shuffle_buffer=8)
    base = dict(
        output_dir=str(out),
        max_steps=30,
        batch_size=8,
        lr=2e-3,
        warmup_steps=5,
        ema_decay=0.9,
        ema_warmup_steps=5,
        log_every=5,
        checkpoint_every=1000,
        progress=False,
        model=tiny_model(),
        text=TextConfig(max_tokens=32),
        data=data,
    )
    base.update(kw)
    return TrainConfig(**base)
