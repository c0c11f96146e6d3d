"""Technical image quality: size, aspect ratio, blur, near-uniform content.

Metrics are computed on the grey image (alpha composited on white). Thresholds come from QualityConfig.
"""

from __future__ import annotations

import cv2
import numpy as np

from mmdata.config import QualityConfig
from mmdata.core.reasons import Reason


def quality_metrics(rgb: np.ndarray) -> dict[str, float]:
    """Metrics of an (H, W, 3) uint8 image."""
    h, w = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    lap = cv2.Laplacian(grey, cv2.CV_64F)
    return {
        "width": float(w),
        "height": float(h),
        "aspect_ratio": float(max(w, h) / max(min(w, h), 1)),
        "laplacian_var": float(lap.var()),
        "grey_std": float(grey.std()),
    }


def check_quality(metrics: dict[str, float], cfg: QualityConfig) -> Reason | None:
    """Return the first failed check as a Reason, or None when the image passes."""
    side = min(metrics["width"], metrics["height"])
    if side < cfg.min_side:
        return Reason("too_small", f"min side {side:.0f} < {cfg.min_side}")
    if metrics["aspect_ratio"] > cfg.max_aspect_ratio:
        return Reason("bad_aspect_ratio", f"{metrics['aspect_ratio']:.2f} > {cfg.max_aspect_ratio}")
    if metrics["grey_std"] < cfg.min_std:
        return Reason("near_uniform", f"grey std {metrics['grey_std']:.2f} < {cfg.min_std}")
    if metrics["laplacian_var"] < cfg.min_laplacian_var:
        return Reason(
            "blurry", f"Laplacian variance {metrics['laplacian_var']:.1f} < {cfg.min_laplacian_var}"
        )
    return None
