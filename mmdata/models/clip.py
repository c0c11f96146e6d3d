"""CLIP image and text embeddings through open_clip.

Weights come from (in order): the handler's `weights_path` or `$MMDATA_CLIP_WEIGHTS` (a checkpoint file,
used with `model_name`, or an open_clip `local-dir` folder holding `open_clip_config.json` and the weights),
else an open_clip `pretrained` tag, which downloads and is therefore only used when the user allows the hub
(`allow_hub=True` or `MMDATA_ALLOW_HUB=1`) and no local path is configured: a path that is given but does
not hold usable weights fails (it never falls back to a download). Without either, loading fails naming
what to provide.

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
    DeviceUnavailableError,
    prepare_image,
    resize_crop,
    to_rgb,
    torch_device,
)
from mmdata.models.features import prepare_text

HUB_ENV = "MMDATA_ALLOW_HUB"
CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
PRECROP_ASPECT = 2.0
"""Images longer than this ratio (long side / short side) have their centre square resampled directly
instead of going through open_clip's whole-image resize (see `ClipImageEmbedder.prepare_for`)."""


@dataclass
class ClipModel:
    """A loaded open_clip model with its eval preprocessing and tokenizer."""

    model: Any
    preprocess: Any
    tokenizer: Any
    device: Any
    shortest_crop: tuple[int, int] | None = (
        None  # (size, PIL resample) of a shortest-side eval transform
    )


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

    The hub (`pretrained`) is used only when no local path is configured at all; a path given as
    `weights_path` or `$MMDATA_CLIP_WEIGHTS` that holds nothing usable raises instead.

    Raises:
        mmdata.weights.WeightsMissingError: the configured path holds no weights, or none is
            configured and the hub is not allowed.
        mmdata.weights.WeightsHashError: the file's sha256 is not `weights_sha256`.
        mmdata.weights.WeightsCorruptError: no sha256 is given and the file is empty or truncated.
        mmdata.weights.WeightsError: the weights are there but open_clip cannot load them.
    """
    import open_clip

    dev = torch_device(device)
    status = weights.check("clip", weights_path, weights_sha256)
    if status.state == "hash-mismatch":
        raise weights.WeightsHashError(status.message)
    if status.state == "corrupt":  # an empty or truncated unpinned file: fail before any data
        raise weights.WeightsCorruptError(status.message)
    if status.state == "missing" and status.origin:
        # a path was given (argument or env var): use it or fail, never download something else
        raise weights.WeightsMissingError(f"CLIP ({model_name}): {status.message}")
    if status.state != "missing":
        path = Path(status.path)  # type: ignore[arg-type]
        try:
            if path.is_dir():
                name = f"local-dir:{path}"
                model, _, preprocess = open_clip.create_model_and_transforms(name, device=dev)
            else:
                name = model_name
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=str(path), device=dev, weights_only=True
                )
        except DeviceUnavailableError:
            raise
        except Exception as exc:
            raise weights.load_error("clip", path, exc) from exc
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
    return ClipModel(model.eval(), preprocess, tokenizer, dev, shortest_crop(preprocess))


def shortest_crop(preprocess: Any) -> tuple[int, int] | None:
    """(size, PIL resample) when `preprocess` starts with torchvision `Resize(size)` (shorter side) and
    `CenterCrop(size)`, open_clip's default eval transform; None for any other transform."""
    from torchvision import transforms as T
    from torchvision.transforms.functional import pil_modes_mapping

    steps = getattr(preprocess, "transforms", None)
    if not steps or len(steps) < 2:
        return None
    resize, crop = steps[0], steps[1]
    if not (isinstance(resize, T.Resize) and isinstance(crop, T.CenterCrop)):
        return None
    size = resize.size
    if isinstance(size, list | tuple):
        if len(size) != 1:
            return None
        size = size[0]
    if resize.max_size is not None or tuple(crop.size) != (size, size):
        return None
    resample = pil_modes_mapping.get(resize.interpolation)
    return None if resample is None else (int(size), resample)


def centre_square(rgb: np.ndarray, size: int, resample: int) -> Image.Image:
    """What torchvision's `Resize(size)` + `CenterCrop(size)` make of `rgb`, resampling only the output
    square (`resize_crop`): the same geometry (long side `int(size * long / short)`, crop offset
    `round((new - size) / 2)`), so the cost no longer grows with the aspect ratio."""
    h, w = rgb.shape[:2]
    short, long = min(h, w), max(h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return Image.fromarray(
        resize_crop(rgb, (new_w, new_h), (left, top, left + size, top + size), resample)
    )


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
        """open_clip's eval preprocessing. For a long strip (aspect ratio over `PRECROP_ASPECT`) under
        the default shortest-side transform, the centre square is resampled first (`centre_square`),
        so a 40000x8 strip does not build a 1,120,000x224 intermediate; the result is the same up to
        rounding of a few pixels."""
        rgb = to_rgb(prepare_image(example, self.min_side), self.background)
        h, w = rgb.shape[:2]
        if model.shortest_crop and max(h, w) > PRECROP_ASPECT * min(h, w):
            return model.preprocess(centre_square(rgb, *model.shortest_crop))
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
