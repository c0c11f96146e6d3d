"""`make bench-train`: training samples/s with real shards vs synthetic in-memory batches, and their ratio.

Both runs do the same full training step (text encoding, condition dropout, forward, backward, AdamW);
only the batch source differs: the streaming shard loader (tar reading, PNG decoding, resizing, in
DataLoader workers) or a few already-decoded batches cycled from memory. A ratio near 1 means the loader
keeps the accelerator busy (aim >= 0.9 on a GPU).

Shards: `--shards` (e.g. a dataset the pipelines wrote), else retrieval-style shards written here from the
bundled sample corpus (real PNG images; target + 3 neighbours from the same folder).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mmdata.train.config import DataConfig, ModelConfig, TextConfig, TrainConfig
from mmdata.train.data import build_loader
from mmdata.train.diffusion import alphas_cumprod
from mmdata.train.loop import diffusion_loss
from mmdata.train.model import InstructUNet
from mmdata.train.text import TextEncoder

log = logging.getLogger("mmdata.bench.train")

MODEL_PRESETS = {
    "tiny": ModelConfig(
        image_size=32,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        head_channels=32,
        cond_dim=128,
    ),
    "base": ModelConfig(),  # 64 px, ~122M parameters
}


def write_corpus_shards(out: Path, n: int, per_shard: int = 200, seed: int = 0) -> Path:
    """Retrieval-style shards from the bundled corpus: each target with 3 neighbours of its folder."""
    import hashlib

    import webdataset as wds

    from mmdata.sample import sample_corpus_dir

    images = sorted(sample_corpus_dir().rglob("*.png"))
    if len(images) < 4:
        raise FileNotFoundError("the bundled sample corpus has too few images; pass --shards")
    by_dir: dict[Path, list[Path]] = {}
    for p in images:
        by_dir.setdefault(p.parent, []).append(p)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], 0
    for s in range(0, n, per_shard):
        name = f"{s // per_shard:05d}.tar"
        with wds.TarWriter(str(out / name), mtime=946684800) as sink:
            for i in range(s, min(n, s + per_shard)):
                target = images[i % len(images)]
                pool = [p for p in by_dir[target.parent] if p != target] or images
                neighbours = [rng.choice(pool) for _ in range(3)]
                caption = target.stem.replace("_", " ").replace("-", " ")
                context = [
                    {
                        "marker": f"[ref#{j + 1}]",
                        "role": "neighbour",
                        "field": f"ctx{j + 1}.png",
                        "text": f"[ref#{j + 1}] {p.stem.replace('_', ' ')}",
                        "source_keys": [p.stem],
                    }
                    for j, p in enumerate(neighbours)
                ]
                key = f"{i:09d}"
                meta = {
                    "key": key,
                    "task": "retrieval",
                    "template_id": "bench",
                    "instruction": f"Generate an image like [ref#1], [ref#2] and [ref#3]: {caption}",
                    "caption": caption,
                    "target": {"field": "target.png", "source_key": target.stem},
                    "context": context,
                    "source_keys": [target.stem],
                    "metadata": {},
                }
                sample = {
                    "__key__": key,
                    "target.png": target.read_bytes(),
                    "json": json.dumps(meta),
                }
                for j, p in enumerate(neighbours):
                    sample[f"ctx{j + 1}.png"] = p.read_bytes()
                sink.write(sample)
                counts += 1
        data = (out / name).read_bytes()
        shards.append(
            {
                "name": name,
                "samples": min(per_shard, n - s),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    manifest = {"shards": shards, "tasks": {"retrieval": counts}, "mixture": {"retrieval": 1.0}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def _steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Any,
    steps: int,
    warmup: int,
    text_encoder: TextEncoder,
    cfg: TrainConfig,
    device: torch.device,
) -> float:
    """Samples/s of `steps` timed training steps after `warmup` untimed ones."""
    acp = alphas_cumprod(cfg.diffusion).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    samples, start = 0, 0.0
    for i, batch in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, samples = time.perf_counter(), 0
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = diffusion_loss(model, batch, text_encoder, acp, cfg, gen, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        samples += batch["target"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shards", nargs="*", help="dataset roots or shard URLs (default: from the corpus)"
    )
    ap.add_argument("--samples", type=int, default=2000, help="corpus shard samples to write")
    ap.add_argument("--model", choices=("auto", *MODEL_PRESETS), default="auto")
    ap.add_argument("--batch-size", type=int, default=0, help="default: 64 on CUDA, 8 on CPU")
    ap.add_argument(
        "--steps", type=int, default=0, help="timed steps (default: 50 on CUDA, 5 on CPU)"
    )
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--repeats", type=int, default=2, help="alternating real/synthetic runs (median)"
    )
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.model if args.model != "auto" else ("base" if cuda else "tiny")
    batch_size = args.batch_size or (64 if cuda else 8)
    steps = args.steps or (50 if cuda else 5)
    tmp = None
    shards = args.shards
    if not shards:
        tmp = tempfile.TemporaryDirectory(prefix="mmdata-bench-train-")
        shards = [str(write_corpus_shards(Path(tmp.name) / "shards", args.samples))]
    cfg = TrainConfig(
        model=MODEL_PRESETS[preset],
        text=TextConfig(),
        data=DataConfig(shards=shards, num_workers=args.num_workers, shuffle_buffer=64),
        batch_size=batch_size,
    )
    text_encoder = TextEncoder(cfg.text, device)
    torch.manual_seed(0)
    model = InstructUNet(cfg.model).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = cfg.model.image_size

    loader = build_loader(cfg.data, batch_size, size, seed=0, pin_memory=cuda)
    real_batches = iter(loader)
    cached = list(itertools.islice(iter(build_loader(cfg.data, batch_size, size, seed=1)), 4))
    reals, synths = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        reals.append(
            _steps(model, optimizer, real_batches, steps, args.warmup, text_encoder, cfg, device)
        )
        synths.append(
            _steps(
                model,
                optimizer,
                itertools.cycle(cached),
                steps,
                args.warmup,
                text_encoder,
                cfg,
                device,
            )
        )
    real, synthetic = statistics.median(reals), statistics.median(synths)
    figures = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "model": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_size": size,
        "batch_size": batch_size,
        "steps": steps,
        "num_workers": args.num_workers,
        "precision": "bf16" if cuda else "fp32",
        "samples_per_s_real_shards": real,
        "samples_per_s_synthetic": synthetic,
        "ratio": real / synthetic,
        "runs_real": reals,
        "runs_synthetic": synths,
        "loader_totals": loader.totals(),
    }
    if cuda:
        figures["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
