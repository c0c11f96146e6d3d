"""The technical quality filter on large images and on shapes drawn on transparency
(mmdata/core/quality.py, mmdata/transforms/quality.filter_quality)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw

from mmdata.config import IngestConfig, QualityConfig
from mmdata.core.quality import ANALYSIS_MAX_SIDE, quality_metrics
from mmdata.core.reasons import Reason
from mmdata.records import RawRecord
from mmdata.transforms.ingest import raw_to_pair
from mmdata.transforms.quality import filter_quality


def _pair(img: Image.Image, key: str = "k"):
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    raw = RawRecord(key=key, source=f"mem://{key}", image=buf.getvalue(), caption="a caption")
    pair = raw_to_pair(raw, IngestConfig())
    assert not isinstance(pair, Reason), pair
    return pair


def test_a_sharp_photo_at_high_resolution_is_not_blurry() -> None:
    """The astronaut photo at 2048 px had a Laplacian variance of ~7.8 (default threshold 10; ~2 at
    4096 px), at 512 px ~860: the blur threshold rejected large photos for their size."""
    small = skimage.data.astronaut()
    big = cv2.resize(small, (2048, 2048), interpolation=cv2.INTER_LANCZOS4)
    out = filter_quality(_pair(Image.fromarray(big)), QualityConfig())
    assert not isinstance(out, Reason), out
    q = out.metadata["quality"]
    assert (q["width"], q["height"]) == (2048, 2048) and q["laplacian_var"] > 10


def test_images_within_the_analysis_size_are_measured_as_they_are() -> None:
    rgb = skimage.data.coffee()  # 600 x 400
    assert max(rgb.shape) <= ANALYSIS_MAX_SIDE
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    m = quality_metrics(rgb)
    assert m["laplacian_var"] == pytest.approx(cv2.Laplacian(grey, cv2.CV_64F).var())
    assert m["grey_std"] == pytest.approx(grey.std())


def test_opaque_rgba_measures_like_rgb() -> None:
    rgb = skimage.data.chelsea()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert quality_metrics(rgba) == quality_metrics(rgb)


def _shape_on_transparency(colour: tuple[int, int, int], size: int = 96) -> Image.Image:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse([10, 10, size - 10, size - 30], fill=colour + (255,))
    d.rectangle([30, size - 25, size - 30, size - 8], fill=colour + (255,))
    return img


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0), (250, 220, 40)])
def test_a_shape_on_transparency_is_kept_whatever_its_colour(colour: tuple[int, int, int]) -> None:
    """A white icon on a transparent background composited on white only was blank: a
    `near_uniform` reject of an image whose content is all in its alpha."""
    out = filter_quality(_pair(_shape_on_transparency(colour)), QualityConfig())
    assert not isinstance(out, Reason), out


def test_fully_transparent_and_flat_translucent_images_are_still_uniform() -> None:
    for img in (
        Image.new("RGBA", (64, 64), (255, 255, 255, 0)),
        Image.new("RGBA", (64, 64), (200, 30, 30, 128)),
    ):
        out = filter_quality(_pair(img), QualityConfig())
        assert isinstance(out, Reason) and out.reason == "near_uniform", out


def test_large_rgba_is_scaled_with_premultiplied_colour() -> None:
    """The colour of invisible pixels must not bleed into edges when scaling down: a white disc on a
    transparent *black* and on a transparent *red* background measure the same."""
    size = 2 * ANALYSIS_MAX_SIDE + 6
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    results = []
    for hidden in ((0, 0, 0), (255, 0, 0)):
        rgb = np.empty((size, size, 3), np.uint8)
        rgb[:] = hidden
        rgb[inside] = 255
        results.append(quality_metrics(np.dstack([rgb, alpha])))
    assert results[0] == results[1]
