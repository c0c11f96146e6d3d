"""Technical image quality: size, aspect ratio, blur, near-uniform content.

Width, height and aspect ratio are the image's own. Blur (variance of the grey Laplacian) and
near-uniformity (grey-level std) are measured on the image scaled down, area-averaged, so its longer
side is at most `ANALYSIS_MAX_SIDE`: the Laplacian's variance falls with the square of the scale or
faster (a sharp photo upscaled to 4096 px has a variance of ~2 where its 512 px original has ~860), so
one threshold could not serve a 256 px icon and a 24 MP photo; it also bounds the memory of the
float64 Laplacian (512 MB for a 64 MP image). An image with alpha is composited on white and on
black and each of the two metrics is the larger of the two: a white shape on transparency is neither
uniform nor blurry, though it vanishes on white. Thresholds come from QualityConfig.
"""

from __future__ import annotations

import cv2
import numpy as np

from mmdata.config import QualityConfig
from mmdata.core.reasons import Reason

ANALYSIS_MAX_SIDE = 1024  # px, the longer side blur and uniformity are measured at


def _scaled(img: np.ndarray) -> np.ndarray:
    """`img` area-averaged down so its longer side is at most ANALYSIS_MAX_SIDE (never up)."""
    h, w = img.shape[:2]
    if max(h, w) <= ANALYSIS_MAX_SIDE:
        return img
    scale = ANALYSIS_MAX_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _composites(pixels: np.ndarray) -> list[np.ndarray]:
    """The RGB image(s) to measure: the image itself, or an RGBA one on white and on black."""
    if pixels.shape[2] == 3:
        return [_scaled(np.ascontiguousarray(pixels))]
    alpha = np.ascontiguousarray(pixels[..., 3])
    # Premultiplied colour scales like the composite does (averaging straight colour would let the
    # colour of invisible pixels bleed into the edges).
    premult = cv2.multiply(
        np.ascontiguousarray(pixels[..., :3]), cv2.merge([alpha] * 3), scale=1 / 255
    )
    premult, alpha = _scaled(premult), _scaled(alpha)
    on_white = cv2.add(premult, cv2.merge([255 - alpha] * 3))
    return [on_white, premult]  # premultiplied colour is the composite on black


def quality_metrics(pixels: np.ndarray) -> dict[str, float]:
    """Metrics of an (H, W, 3) RGB or (H, W, 4) RGBA uint8 image."""
    h, w = pixels.shape[:2]
    greys = [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) for rgb in _composites(pixels)]
    return {
        "width": float(w),
        "height": float(h),
        "aspect_ratio": float(max(w, h) / max(min(w, h), 1)),
        "laplacian_var": max(float(cv2.Laplacian(g, cv2.CV_64F).var()) for g in greys),
        "grey_std": max(float(g.std()) for g in greys),
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
