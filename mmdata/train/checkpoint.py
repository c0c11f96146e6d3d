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
from safetensors import SafetensorError
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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, damaged, edited): a user's bad input file,
    reported on the command line as one line that names it (a ValueError: exit 2)."""


def damaged(file: Path, why: object) -> CheckpointError:
    """The error for a checkpoint file that cannot be read: it names the file, says why, and how
    to go on."""
    why = " ".join(str(why).split())  # one line
    return CheckpointError(
        f"checkpoint file {file} is damaged or truncated ({why:.200}): use an earlier checkpoint "
        f"(another step_* folder beside {file.parent.name}; to resume from it, delete the "
        "damaged one and the `latest` pointer if it names it) or train again"
    )


def _read_json(file: Path) -> Any:
    """A checkpoint's JSON file (an OSError names it; bad JSON is a CheckpointError)."""
    try:
        return json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise damaged(file, f"not valid JSON: {e}") from None


def read_config(path: str | Path) -> TrainConfig:
    """The TrainConfig of a checkpoint (its config.json)."""
    file = Path(path) / "config.json"
    data = _read_json(file)
    if not isinstance(data, dict):
        raise damaged(file, "not a JSON object")
    try:
        return TrainConfig.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise damaged(file, e) from None


def read_state(path: str | Path) -> dict[str, Any]:
    """The run state of a checkpoint (its state.json): step, samples seen, data positions."""
    file = Path(path) / "state.json"
    state = _read_json(file)
    if not isinstance(state, dict):
        raise damaged(file, "not a JSON object")
    for key in ("step", "samples_seen"):
        v = state.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise damaged(file, f"{key} is {v!r}, not a non-negative integer")
    if "data" in state and not isinstance(state["data"], list):
        raise damaged(file, "data is not a list (one data position per process)")
    return state


def read_optimizer_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The optimiser and LR scheduler state of a checkpoint (its optimizer.pt), to resume."""
    file = Path(path) / "optimizer.pt"
    try:
        opt = torch.load(file, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError...
        raise damaged(file, e) from None
    if not isinstance(opt, dict) or not {"optimizer", "scheduler"} <= set(opt):
        raise damaged(file, "no optimizer and scheduler state in it")
    return opt


def read_weights(path: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """`which` = ema | model."""
    file = Path(path) / f"{which}.safetensors"
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise damaged(file, e) from None


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
    weights = read_weights(path, which)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # missing / unexpected keys, wrong shapes
        raise damaged(
            Path(path) / f"{which}.safetensors", f"its weights do not fit config.json: {e}"
        ) from None
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
