"""Canny edges (OpenCV): the always-available edge backend, no weights."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mmdata.models.base import WHITE, BatchedModelHandler, prepare_image


@dataclass(frozen=True)
class CannyParams:
    """Thresholds on the gradient magnitude; None means automatic (from the median intensity)."""

    low: float | None = None
    high: float | None = None
    blur: int = 3  # Gaussian blur kernel before Canny (odd; 0 or 1 = no blur)
    sigma: float = 0.33  # automatic thresholds: (1 -+ sigma) * median
    background: tuple[int, int, int] = WHITE  # RGB under transparent pixels (RGBA input)

    def __post_init__(self) -> None:
        """Reject parameters OpenCV would only fail on once data flows (e.g. an even blur kernel)."""
        blur = self.blur
        if isinstance(blur, bool) or not isinstance(blur, int | np.integer):
            raise ValueError(f"blur must be an int (0, 1 or an odd kernel size > 1), got {blur!r}")
        if blur < 0 or (blur > 1 and blur % 2 == 0):
            raise ValueError(f"blur must be 0 or 1 (no blur) or an odd kernel size > 1, got {blur}")
        if (self.low is None) != (self.high is None):
            raise ValueError(
                "give both Canny thresholds (low and high) or neither (automatic), "
                f"got low={self.low!r} high={self.high!r}"
            )
        if self.low is not None and self.high is not None:
            for name, value in (("low", self.low), ("high", self.high)):
                number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
                if not number or not np.isfinite(value) or value < 0:
                    raise ValueError(f"Canny threshold {name} must be a number >= 0, got {value!r}")
            if self.low > self.high:
                raise ValueError(f"Canny threshold low ({self.low}) is above high ({self.high})")
        if not (np.isfinite(self.sigma) and 0.0 <= self.sigma <= 1.0):
            raise ValueError(f"sigma must be in [0, 1], got {self.sigma!r}")


@functools.lru_cache(maxsize=16)
def _luma(rgb: tuple[int, int, int]) -> int:
    return int(cv2.cvtColor(np.array([[rgb]], dtype=np.uint8), cv2.COLOR_RGB2GRAY)[0, 0])


def to_grey(image: np.ndarray, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """uint8 HxWx3 RGB or HxWx4 RGBA -> uint8 HxW luma (ITU-R 601, as OpenCV), RGBA composited on
    `background`. The alpha blend is done on the luma (one channel instead of three): rounded
    integer blend, (g * a + bg * (255 - a) + 127) // 255, bg being the background's luma."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    alpha = cv2.extractChannel(image, 3)
    bg = _luma(tuple(background))
    if bg == 255:
        # 255 - round((255 - g) * a / 255): the same integers as the blend above, in OpenCV's
        # saturating uint8 arithmetic (x / 255 never falls on .5 for integer x)
        return cv2.bitwise_not(cv2.multiply(cv2.bitwise_not(grey), alpha, scale=1 / 255))
    a = alpha.astype(np.uint16)
    out = grey.astype(np.uint16) * a + bg * (255 - a) + 127
    return (out // 255).astype(np.uint8)


def canny_edges(image: np.ndarray, params: CannyParams) -> np.ndarray:
    """uint8 HxW grey, HxWx3 RGB or HxWx4 RGBA -> uint8 HxW edge map (0 or 255). Colour images are
    taken to luma first (`to_grey`, RGBA composited on `params.background`): part of the edge
    algorithm, as OpenCV's Canny works on one channel."""
    grey = to_grey(image, params.background)
    if params.blur and params.blur > 1:
        grey = cv2.GaussianBlur(grey, (params.blur, params.blur), 0)
    if params.low is None or params.high is None:
        med = float(np.median(grey))
        low = max(0.0, (1.0 - params.sigma) * med)
        high = min(255.0, (1.0 + params.sigma) * med)
        if high - low < 20:  # flat images: keep real steps, not noise
            low, high = 50.0, 150.0
    else:
        low, high = params.low, params.high
    return cv2.Canny(grey, low, high, L2gradient=True)


class CannyEdgeHandler(BatchedModelHandler[np.ndarray, CannyParams]):
    """Canny edges. Element: uint8 RGB/RGBA image. Output: uint8 HxW edge map (0/255), input size.

    Args:
        low, high: gradient thresholds (both >= 0, low <= high), or both None for automatic ones.
        blur: Gaussian blur kernel before Canny: 0 or 1 for none, else odd. Bad parameters raise
            `ValueError` here, not once data flows.
        background: RGB colour under transparent pixels.
    """

    weights_name = None

    def __init__(
        self,
        *,
        low: float | None = None,
        high: float | None = None,
        blur: int = 3,
        background: tuple[int, int, int] = WHITE,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.params = CannyParams(low=low, high=high, blur=blur, background=tuple(background))

    @property
    def model_id(self) -> str:
        return "canny"

    def _load(self, path: Any) -> CannyParams:
        return self.params

    @property
    def background(self) -> tuple[int, int, int]:
        return self.params.background

    def prepare(self, example: Any) -> np.ndarray:
        # the luma conversion (and alpha compositing) is the model's first step, in `forward`
        return prepare_image(example, 3)

    def forward(self, model: CannyParams, items: list[np.ndarray]) -> list[np.ndarray]:
        return [canny_edges(x, model) for x in items]
