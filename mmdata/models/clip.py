"""CLIP image and text embeddings through open_clip.

Weights come from (in order): the handler's `weights_path` or `$MMDATA_CLIP_WEIGHTS` (a checkpoint file,
used with `model_name`, or an open_clip `local-dir` folder holding `open_clip_config.json` and the weights),
else an open_clip `pretrained` tag, which downloads and is therefore only used when the user allows the hub
(`allow_hub=True` or `MMDATA_ALLOW_HUB=1`). Without either, loading fails naming what to provide.

`save_open_clip_dir` writes a model as such a folder (config + safetensors); the tests build a tiny
random-initialised config, save it and load it back through the same code users run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmdata import weights
from mmdata.models.base import (
    WHITE,
    BatchedModelHandler,
    prepare_image,
    to_rgb,
    torch_device,
)
from mmdata.models.features import prepare_text

HUB_ENV = "MMDATA_ALLOW_HUB"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


@dataclass
class ClipModel:
    """A loaded open_clip model with its eval preprocessing and tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any


def hub_allowed(allow_hub: bool | None) -> bool:
    """The explicit flag, else `$MMDATA_ALLOW_HUB` in (1, true, yes)."""
    if allow_hub is not None:
        return allow_hub
    return os.environ.get(HUB_ENV, "").lower() in ("1", "true", "yes")


def load_open_clip(
    model_name: str,
    pretrained: str | None,
    weights_path: str | None,
    weights_sha256: str | None,
    device: str,
    allow_hub: bool | None = None,
    cache_dir: str | None = None,
) -> ClipModel:
    """Load an open_clip model from a local path, or from the hub when allowed.

    Raises:
        mmdata.weights.WeightsError: no local weights and the hub is not allowed (or a hash mismatch).
    """
    import open_clip

    dev = torch_device(device)
    status = weights.check("clip", weights_path, weights_sha256)
    if status.state == "hash-mismatch":
        raise weights.WeightsHashError(status.message)
    if status.state != "missing":
        path = Path(status.path)  # type: ignore[arg-type]
        if path.is_dir():
            name = f"local-dir:{path}"
            model, _, preprocess = open_clip.create_model_and_transforms(name, device=dev)
        else:
            name = model_name
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(path), device=dev, weights_only=True
            )
    elif pretrained and hub_allowed(allow_hub):
        name = model_name
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=dev, cache_dir=cache_dir
        )
    else:
        why = (
            f"pretrained tag {pretrained!r} needs the hub, which is off (allow_hub=True or "
            f"{HUB_ENV}=1 turns it on); "
            if pretrained
            else ""
        )
        raise weights.WeightsMissingError(f"CLIP ({model_name}): {why}{status.message}")
    tokenizer = open_clip.get_tokenizer(name)
    return ClipModel(model.eval(), preprocess, tokenizer, dev)


def save_open_clip_dir(model: torch.nn.Module, model_cfg: dict, path: str | Path) -> Path:
    """Write `model` as an open_clip local-dir folder: `open_clip_config.json` + safetensors weights."""
    from safetensors.torch import save_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_NAME).write_text(json.dumps({"model_cfg": model_cfg}, indent=2))
    save_model(model, str(path / WEIGHTS_NAME))
    return path


class _ClipHandler(BatchedModelHandler[Any, ClipModel]):
    weights_name = "clip"

    def __init__(
        self,
        *,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        allow_hub: bool | None = None,
        cache_dir: str | None = None,
        weights_sha256: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(weights_sha256=weights_sha256, **kwargs)
        self.model_name = model_name
        self.pretrained = pretrained
        self.allow_hub = allow_hub
        self.cache_dir = cache_dir

    def load_model(self) -> ClipModel:
        return load_open_clip(
            self.model_name,
            self.pretrained,
            self.weights_path,
            self.weights_sha256,
            self.device,
            self.allow_hub,
            self.cache_dir,
        )


class ClipImageEmbedder(_ClipHandler):
    """CLIP image embeddings. Element: uint8 RGB/RGBA image. Output: float32 (D,) unit vector.

    Args:
        model_name: open_clip architecture (ignored for a local-dir folder, which carries its config).
        pretrained: open_clip pretrained tag, used only when the hub is allowed and no local path is set.
        allow_hub: allow downloads (default: `$MMDATA_ALLOW_HUB`).
        background: RGB colour under transparent pixels.
    """

    def __init__(
        self, *, background: tuple[int, int, int] = WHITE, min_side: int = 8, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.background = background
        self.min_side = min_side

    def prepare_for(self, example: Any, model: ClipModel) -> torch.Tensor:
        rgb = to_rgb(prepare_image(example, self.min_side), self.background)
        return model.preprocess(Image.fromarray(rgb))

    def forward(self, model: ClipModel, items: list[torch.Tensor]) -> list[np.ndarray]:
        with torch.inference_mode():
            feats = model.model.encode_image(torch.stack(items).to(model.device))
            feats = F.normalize(feats.float(), dim=-1)
        return list(feats.cpu().numpy())


class ClipTextEmbedder(_ClipHandler):
    """CLIP text embeddings. Element: str. Output: float32 (D,) unit vector."""

    def __init__(self, *, max_chars: int = 2_000, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def prepare(self, example: Any) -> str:
        return prepare_text(example, self.max_chars)

    def forward(self, model: ClipModel, items: list[str]) -> list[np.ndarray]:
        with torch.inference_mode():
            tokens = model.tokenizer(items).to(model.device)
            feats = F.normalize(model.model.encode_text(tokens).float(), dim=-1)
        return list(feats.cpu().numpy())

    def get_num_bytes(self, batch: Any) -> int:
        return sum(len(str(x)) for x in batch)
