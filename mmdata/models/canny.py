"""Canny edges (OpenCV): the always-available edge backend, no weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mmdata.models.base import WHITE, BatchedModelHandler, prepare_image, to_rgb


@dataclass(frozen=True)
class CannyParams:
    """Thresholds on the gradient magnitude; None means automatic (from the median intensity)."""

    low: float | None = None
    high: float | None = None
    blur: int = 3  # Gaussian blur kernel before Canny (odd; 0 or 1 = no blur)
    sigma: float = 0.33  # automatic thresholds: (1 -+ sigma) * median


def canny_edges(rgb: np.ndarray, params: CannyParams) -> np.ndarray:
    """uint8 HxWx3 RGB -> uint8 HxW edge map (0 or 255)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
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
    """Canny edges. Element: uint8 RGB/RGBA image. Output: uint8 HxW edge map (0/255), input size."""

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
        self.params = CannyParams(low=low, high=high, blur=blur)
        self.background = background

    @property
    def model_id(self) -> str:
        return "canny"

    def _load(self, path: Any) -> CannyParams:
        return self.params

    def prepare(self, example: Any) -> np.ndarray:
        return to_rgb(prepare_image(example, 3), self.background)

    def forward(self, model: CannyParams, items: list[np.ndarray]) -> list[np.ndarray]:
        return [canny_edges(x, model) for x in items]
