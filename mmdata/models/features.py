"""Offline default embedders with real pretrained weights.

* `EfficientNetImageEmbedder`: EfficientNet-Lite0 (ImageNet) pooled features, 1280-d.
* `MiniLMTextEmbedder`: all-MiniLM-L6-v2 (sentence-transformers), 384-d.

Same interface as `mmdata.models.clip`: an image (or a string) in, an L2-normalised float32 vector out, so
stages can run on either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdata.models.base import (
    WHITE,
    BatchedModelHandler,
    InputRejected,
    prepare_image,
    resize_short_center_crop,
    to_rgb,
    torch_device,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EFFICIENTNET_SIZE = 224


class EfficientNetFeatures(nn.Module):
    """EfficientNet trunk + global average pooling + L2 normalisation.

    Pure module: `x: (N, 3, 224, 224)` ImageNet-normalised RGB -> `(N, 1280)` unit vectors.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net.extract_features(x)
        return F.normalize(feats.mean(dim=(2, 3)), dim=-1)


def load_efficientnet_lite0(path: str | Path) -> EfficientNetFeatures:
    """EfficientNet-Lite0 from a state-dict file, loaded with `weights_only=True`."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.set_swish(memory_efficient=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return EfficientNetFeatures(net).eval()


def to_imagenet_input(rgb: np.ndarray, size: int = EFFICIENTNET_SIZE) -> np.ndarray:
    """uint8 HxWx3 -> float32 (3, size, size): short-side resize, centre crop, ImageNet normalisation."""
    x = resize_short_center_crop(rgb, size).astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


class EfficientNetImageEmbedder(BatchedModelHandler[np.ndarray, EfficientNetFeatures]):
    """Image embeddings. Element: uint8 RGB/RGBA image. Output: float32 (1280,) unit vector.

    Args:
        background: RGB colour under transparent pixels.
        min_side: smaller images become a `too_small` reject.
    """

    weights_name = "efficientnet-lite0"
    dim = 1280

    def __init__(
        self, *, background: tuple[int, int, int] = WHITE, min_side: int = 8, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.background = background
        self.min_side = min_side

    def _load(self, path: Path) -> EfficientNetFeatures:
        return load_efficientnet_lite0(path).to(torch_device(self.device))

    def prepare(self, example: Any) -> np.ndarray:
        return to_imagenet_input(to_rgb(prepare_image(example, self.min_side), self.background))

    def forward(self, model: EfficientNetFeatures, items: list[np.ndarray]) -> list[np.ndarray]:
        dev = next(model.parameters()).device
        with torch.inference_mode():
            out = model(torch.from_numpy(np.stack(items)).to(dev))
        return list(out.float().cpu().numpy())


class MiniLMTextEmbedder(BatchedModelHandler[str, Any]):
    """Text embeddings with all-MiniLM-L6-v2. Element: str. Output: float32 (384,) unit vector.
    Empty or non-string elements become an `empty_text` / `bad_text` reject."""

    weights_name = "all-minilm-l6-v2"
    dim = 384

    def __init__(self, *, max_chars: int = 10_000, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def _load(self, path: Path) -> Any:
        # A local folder never needs the hub: `local_files_only=True` keeps this load off it without
        # touching HF_HUB_OFFLINE, which would turn the hub off for every later load in the process.
        from sentence_transformers import SentenceTransformer

        torch_device(self.device)
        model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        return model.eval()

    def prepare(self, example: Any) -> str:
        return prepare_text(example, self.max_chars)

    def forward(self, model: Any, items: list[str]) -> list[np.ndarray]:
        out = model.encode(
            items,
            batch_size=len(items),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return list(out.astype(np.float32))

    def get_num_bytes(self, batch: Any) -> int:
        return sum(len(str(x)) for x in batch)


def prepare_text(example: Any, max_chars: int) -> str:
    """Validate one text element; raises `InputRejected` for non-strings and blank strings."""
    if not isinstance(example, str):
        raise InputRejected("bad_text", f"expected str, got {type(example).__name__}")
    text = example.strip()
    if not text:
        raise InputRejected("empty_text", "blank text")
    return text[:max_chars]
