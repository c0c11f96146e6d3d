"""Checkpoints: weights as safetensors, the config as JSON, optimiser and run state beside them.

Layout of `<output_dir>/checkpoints/step_00001000/`:
    model.safetensors   the trained weights (LoRA adapters included when LoRA is on)
    ema.safetensors     the EMA weights (what sampling uses by default)
    optimizer.pt        optimiser + LR scheduler state (torch.save; needed only to resume)
    state.json          step, samples seen, the data position of every process
    config.json         the full TrainConfig: enough to rebuild the model
A checkpoint is written under a temporary name and renamed when complete; `latest` names the newest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmdata.train.config import TrainConfig
from mmdata.train.model import InstructUNet, apply_lora

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step_{step:08d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under output_dir, or None."""
    root = Path(output_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text().strip()
        if (path / "state.json").exists():
            return path
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").exists())
    return done[-1] if done else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory as it is, or a run directory's latest checkpoint."""
    p = Path(path)
    if (p / "config.json").exists() and (p / "ema.safetensors").exists():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {path} (nor is it a checkpoint folder)")
    return latest


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def write_checkpoint(
    tmp: Path,
    model: torch.nn.Module,
    ema_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any],
    cfg: TrainConfig,
    state: dict[str, Any],
) -> None:
    """Write the files of one checkpoint into the temporary directory `tmp` (main process)."""
    save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
    save_file(_tensors(ema_state), str(tmp / "ema.safetensors"))
    torch.save(optim_state, tmp / "optimizer.pt")
    cfg.to_json(tmp / "config.json")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")


def publish_checkpoint(tmp: Path, final: Path, keep: int) -> None:
    """Rename a complete checkpoint into place, point `latest` at it, delete the oldest beyond `keep`."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    (final.parent / LATEST).write_text(final.name + "\n")
    done = sorted(p for p in final.parent.glob("step_*") if (p / "state.json").exists())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def read_config(path: str | Path) -> TrainConfig:
    return TrainConfig.from_dict(json.loads((Path(path) / "config.json").read_text()))


def read_weights(path: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """`which` = ema | model."""
    return load_file(str(Path(path) / f"{which}.safetensors"))


def build_model_lora(model: InstructUNet, cfg: TrainConfig) -> InstructUNet:
    """Inject the config's LoRA adapters into `model` (which then trains only those)."""
    lc = cfg.lora
    return apply_lora(model, lc.r, lc.alpha, lc.dropout, lc.target_modules, lc.train_context_layer)


def build_model(cfg: TrainConfig) -> InstructUNet:
    """The model of a config, with LoRA adapters injected when the config has LoRA on."""
    model = InstructUNet(cfg.model)
    return build_model_lora(model, cfg) if cfg.lora.enabled else model


def load_model(path: str | Path, which: str = "ema") -> tuple[InstructUNet, TrainConfig]:
    """Rebuild a checkpoint's model in eval mode (on CPU) with its `ema` or `model` weights."""
    cfg = read_config(path)
    model = build_model(cfg)
    model.load_state_dict(read_weights(path, which))
    return model.eval(), cfg


def model_config_diff(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Differences between two configs' model sections (they must match to share weights)."""
    da, db = a.to_dict()["model"], b.to_dict()["model"]
    return {k: (da[k], db[k]) for k in da if da[k] != db.get(k)}


def describe_config_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    """`{field: (checkpoint's, this run's)}` as text that says which side is which."""
    return "; ".join(
        f"{k}: checkpoint has {a!r}, this run's config has {b!r}" for k, (a, b) in diff.items()
    )
