"""The input contract: odd modes and sizes are converted; what a model cannot take becomes a reject."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmdata.models import HANDLERS, make_handler
from mmdata.models.base import (
    InputRejected,
    ModelReject,
    as_uint8_image,
    check_size,
    is_reject,
    to_rgb,
)
from mmdata.models.canny import CannyEdgeHandler

from .conftest import infer


def test_conversions_keep_content() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = as_uint8_image(grey)
    assert out.shape == (3, 4, 3) and (out[:, :, 1] == grey).all()
    la = np.dstack([grey, np.full_like(grey, 7)])
    out = as_uint8_image(la)
    assert out.shape == (3, 4, 4) and (out[:, :, 3] == 7).all() and (out[:, :, 0] == grey).all()
    f = np.full((2, 2, 3), 0.5, np.float32)
    assert (as_uint8_image(f) == 128).all()
    u16 = np.full((2, 2, 3), 65535, np.uint16)
    assert (as_uint8_image(u16) == 255).all()
    b = np.array([[True, False]])
    assert as_uint8_image(b)[0, :, 0].tolist() == [255, 0]
    big_int = np.array([[-5, 300]], dtype=np.int32)
    assert as_uint8_image(big_int)[0, :, 0].tolist() == [0, 255]


def test_pil_modes() -> None:
    p = Image.new("P", (5, 4))
    p.putpalette([10, 20, 30] * 256)
    assert as_uint8_image(p).shape == (4, 5, 3)
    p.info["transparency"] = 0
    assert as_uint8_image(p).shape == (4, 5, 4)
    i16 = Image.fromarray(np.full((4, 5), 1000, np.uint16))
    assert as_uint8_image(i16).shape == (4, 5, 3)
    cmyk = Image.new("CMYK", (5, 4), (0, 0, 0, 0))
    assert (as_uint8_image(cmyk) == 255).all()
    assert as_uint8_image(Image.new("LA", (5, 4))).shape == (4, 5, 4)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((2, 2, 2, 3), np.uint8),
        np.full((3, 3, 3), np.nan, np.float32),
        "not an image",
        None,
    ],
)
def test_unconvertible_inputs_raise_reject(bad) -> None:  # noqa: ANN001
    with pytest.raises(InputRejected) as err:
        as_uint8_image(bad)
    assert err.value.reason == "bad_image"


def test_alpha_composite_and_size_checks() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (100, 0, 0, 255)
    rgb = to_rgb(rgba, (255, 255, 255))
    assert rgb[0, 0].tolist() == [100, 0, 0] and rgb[1, 1].tolist() == [255, 255, 255]
    assert check_size(np.zeros((4, 10, 3)), min_side=8) == (
        "too_small",
        "10x4 image; both sides need at least 8 px",
    )
    assert check_size(np.zeros((40, 40, 3)), max_pixels=100)[0] == "too_large"
    assert check_size(np.zeros((40, 40, 3)), min_side=8, max_pixels=10_000) is None


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_to_rgb_is_the_rounded_integer_blend(background) -> None:  # noqa: ANN001
    """White and black take OpenCV's fast path, other colours numpy's: all give exactly
    (c * a + bg * (255 - a) + 127) // 255, also on a non-contiguous view."""
    rgba = np.random.default_rng(5).integers(0, 256, (41, 67, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    c, a = rgba[:, :, :3].astype(int), rgba[:, :, 3:].astype(int)
    expected = (c * a + np.asarray(background) * (255 - a) + 127) // 255
    rgb = to_rgb(rgba, background)
    assert rgb.dtype == np.uint8 and rgb.shape == (41, 67, 3)
    assert np.array_equal(rgb, expected)
    assert np.array_equal(to_rgb(rgba[:, ::2], background), expected[:, ::2])


def test_rejects_keep_their_place_in_the_batch() -> None:
    h = CannyEdgeHandler()
    m = h.load_model()
    good = np.zeros((32, 32, 3), np.uint8)
    good[8:24, 8:24] = 255
    res = infer((h, m), [good, "junk", np.zeros((1, 1, 3), np.uint8), good[:, :, 0]])
    assert [is_reject(r) for r in res] == [False, True, True, False]
    assert res[1].inference == ModelReject(
        "canny", "bad_image", "expected a numpy image array, got str"
    )
    assert res[2].inference.reason == "too_small"
    assert res[1].example == "junk"
    assert (res[0].inference == res[3].inference).all()  # grey converted, same edges


def test_make_handler_names() -> None:
    assert isinstance(make_handler("canny", low=10, high=20), CannyEdgeHandler)
    assert len(HANDLERS) >= 11
    with pytest.raises(KeyError, match="unknown model backend"):
        make_handler("nope")
