"""Monocular depth (MiDaS/DPT) through transformers' `DPTForDepthEstimation`.

No depth weights ship in a package: the model comes from a local folder (`weights_path` or
`$MMDATA_DEPTH_WEIGHTS`: config.json + model.safetensors, as written by `save_pretrained`), or from a hub id
(e.g. "Intel/dpt-hybrid-midas") when the user allows the hub (`allow_hub=True` or `MMDATA_ALLOW_HUB=1`)
and no local folder is configured: a path that is given but does not hold a usable model fails (it never
falls back to a download).
Without either, `load_model` raises a `WeightsMissingError` that says what to provide; a stage whose config
marks depth optional should check `mmdata.weights.check("depth-dpt").state` and skip instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmdata import weights
from mmdata.models.base import (
    WHITE,
    BatchedModelHandler,
    prepare_image,
    resize_rgb,
    to_rgb,
    torch_device,
)
from mmdata.models.clip import hub_allowed

DEFAULT_SIZE = 384
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


@dataclass
class DepthModel:
    model: Any
    size: int
    mean: np.ndarray
    std: np.ndarray
    device: Any


def _preprocess_cfg(path: Path | None, config: Any) -> tuple[int, tuple, tuple]:
    size = int(getattr(config, "image_size", DEFAULT_SIZE) or DEFAULT_SIZE)
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    proc = path / "preprocessor_config.json" if path else None
    if proc is not None and proc.is_file():
        cfg = json.loads(proc.read_text())
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
        s = cfg.get("size", {})
        size = int(s.get("height", size)) if isinstance(s, dict) else int(s)
    return size, mean, std


def load_dpt(
    weights_path: str | None,
    hub_id: str | None,
    device: str,
    allow_hub: bool | None = None,
    weights_sha256: str | None = None,
) -> DepthModel:
    """Load a DPT depth model from a local folder, or from `hub_id` when the hub is allowed and no
    local folder is configured.

    Raises:
        mmdata.weights.WeightsMissingError: the configured path holds no model folder, or none is
            configured and the hub is off.
        mmdata.weights.WeightsError: the folder is there but transformers cannot load it.
    """
    from transformers import DPTForDepthEstimation

    dev = torch_device(device)
    status = weights.check("depth-dpt", weights_path, weights_sha256)
    if status.state == "hash-mismatch":
        raise weights.WeightsHashError(status.message)
    if status.state == "corrupt":  # an empty or truncated unpinned file: fail before any data
        raise weights.WeightsCorruptError(status.message)
    if status.state == "missing" and status.origin:
        # a path was given (argument or env var): use it or fail, never download something else
        raise weights.WeightsMissingError(f"depth: {status.message}")
    if status.state != "missing":
        path: Path | None = Path(status.path)  # type: ignore[arg-type]
        try:
            model = DPTForDepthEstimation.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:
            raise weights.load_error("depth-dpt", path, exc) from exc
    elif hub_id and hub_allowed(allow_hub):
        path = None
        model = DPTForDepthEstimation.from_pretrained(hub_id)
    else:
        why = f"hub id {hub_id!r} needs the hub, which is off; " if hub_id else ""
        raise weights.WeightsMissingError(f"depth: {why}{status.message}")
    size, mean, std = _preprocess_cfg(path, model.config)
    return DepthModel(
        model.eval().to(dev),
        size,
        np.asarray(mean, dtype=np.float32),
        np.asarray(std, dtype=np.float32),
        dev,
    )


class DPTDepthHandler(BatchedModelHandler[np.ndarray, DepthModel]):
    """Relative depth maps. Element: uint8 RGB/RGBA image. Output: float32 HxW relative inverse depth
    (near = 1, far = 0), min-max normalised per image, at the input's size.

    Args:
        hub_id: hub model id used when no local folder is configured and the hub is allowed.
        allow_hub: allow downloads (default: `$MMDATA_ALLOW_HUB`).
        background: RGB colour under transparent pixels.
    """

    weights_name = "depth-dpt"

    def __init__(
        self,
        *,
        hub_id: str | None = "Intel/dpt-hybrid-midas",
        allow_hub: bool | None = None,
        background: tuple[int, int, int] = WHITE,
        min_side: int = 8,
        weights_sha256: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(weights_sha256=weights_sha256, **kwargs)
        self.hub_id = hub_id
        self.allow_hub = allow_hub
        self.background = background
        self.min_side = min_side

    def load_model(self) -> DepthModel:
        return load_dpt(
            self.weights_path, self.hub_id, self.device, self.allow_hub, self.weights_sha256
        )

    def prepare_for(self, example: Any, model: DepthModel) -> tuple[np.ndarray, tuple[int, int]]:
        rgb = to_rgb(prepare_image(example, self.min_side), self.background)
        x = resize_rgb(rgb, (model.size, model.size)).astype(np.float32) / 255.0
        x = (x - model.mean) / model.std
        return np.ascontiguousarray(x.transpose(2, 0, 1)), rgb.shape[:2]

    def forward(self, model: DepthModel, items: list[Any]) -> list[np.ndarray]:
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(model.device)
        with torch.inference_mode():
            depth = model.model(pixel_values=x).predicted_depth  # (N, h, w)
        out = []
        for j, (_, size) in enumerate(items):
            d = F.interpolate(depth[j][None, None], size=size, mode="bicubic", align_corners=False)
            d = d[0, 0].float().cpu().numpy()
            lo, hi = float(d.min()), float(d.max())
            out.append(((d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)).astype(np.float32))
        return out
