"""HED (real BSDS500 weights) and Canny on drawn shapes and photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from mmdata import weights
from mmdata.models.canny import CannyEdgeHandler
from mmdata.models.hed import HED, load_hed_h5, to_hed_input

from .conftest import infer, outputs


def drawn_shape(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A filled polygon + ellipse on a plain background, and its boolean region."""
    im = Image.new("RGB", (size, size), (235, 235, 225))
    region = Image.new("L", (size, size), 0)
    for d, fill in ((ImageDraw.Draw(im), (40, 90, 200)), (ImageDraw.Draw(region), 255)):
        d.polygon([(20, 30), (70, 14), (100, 60), (60, 108), (24, 90)], fill=fill)
        d.ellipse((78, 78, 118, 118), fill=fill)
    return np.asarray(im), np.asarray(region) > 0


def zones(region: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boundary = ndimage.binary_dilation(region, iterations=2) & ~ndimage.binary_erosion(
        region, iterations=2
    )
    interior = ndimage.binary_erosion(region, iterations=6)
    background = ~ndimage.binary_dilation(region, iterations=6)
    return boundary, interior, background


def test_hed_boundary_far_above_interior_and_background(hed) -> None:  # noqa: ANN001
    img, region = drawn_shape()
    edges = outputs(hed, [img])[0]
    assert edges.shape == region.shape and edges.dtype == np.float32
    assert 0.0 <= edges.min() and edges.max() <= 1.0
    b, i, g = zones(region)
    mb, mi, mg = edges[b].mean(), edges[i].mean(), edges[g].mean()
    print(f"HED mean edge prob: boundary {mb:.3f} interior {mi:.4f} background {mg:.4f}")
    assert mb > 0.5
    assert mb > 20 * mi and mb > 20 * mg


def test_canny_agrees_with_hed(hed) -> None:  # noqa: ANN001
    img, region = drawn_shape()
    h = CannyEdgeHandler()
    canny = outputs((h, h.load_model()), [img])[0]
    assert canny.dtype == np.uint8 and set(np.unique(canny)) <= {0, 255}
    b, i, g = zones(region)
    on = canny > 0
    assert on[b].mean() > 0.25 and on[i].sum() == 0 and on[g].sum() == 0
    edges = outputs(hed, [img])[0]
    near_hed = ndimage.binary_dilation(edges > 0.5, iterations=2)
    agree = near_hed[on].mean()
    print(f"Canny pixels within 2 px of HED>0.5: {agree:.3f}")
    assert agree > 0.95


def test_hed_on_photo_and_odd_sizes(hed, photos) -> None:  # noqa: ANN001
    img = photos["coffee"][:75, :101]  # odd sizes exercise ceil-mode pooling and resizing back
    handler, model = hed
    e = outputs(hed, [img])[0]
    assert e.shape == (75, 101)
    assert 0.02 < e.mean() < 0.6
    small = type(handler)(max_side=48)
    e2 = list(small.run_inference([img], model))[0].inference
    assert e2.shape == (75, 101)


def test_hed_batch_of_one_equals_batch_of_n_and_is_deterministic(hed, photos, icons) -> None:  # noqa: ANN001
    cat = photos["chelsea"][:64, :96]
    imgs = [cat, icons[("face", "flat")][:80], cat, icons[("star", "outline")]]
    together = outputs(hed, imgs)
    alone = [outputs(hed, [x])[0] for x in imgs]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(together[0], together[2])
    again = outputs(hed, imgs)  # the same batch again: bit-identical on CPU
    for a, b in zip(again, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hed_module_matches_the_h5_file() -> None:
    """Spot-check the layer mapping: block1's first conv on a tiny input equals a direct convolution
    with the h5 kernel (Keras HWIO layout)."""
    import h5py

    path = weights.resolve("hed-bsds500")
    model = load_hed_h5(path)
    assert isinstance(model, HED)
    with h5py.File(path, "r") as f:
        k = np.asarray(f["block1/layers/conv2d/vars/0"])  # (3, 3, 3, 64)
        bias = np.asarray(f["block1/layers/conv2d/vars/1"])
        fuse = np.asarray(f["fuse/vars/0"]).reshape(-1)
    x = to_hed_input(np.random.default_rng(0).integers(0, 255, (5, 5, 3), dtype=np.uint8))
    with torch.no_grad():
        y = model.blocks[0][0](torch.from_numpy(x)[None])[0, :, 2, 2].numpy()
    patch = x[:, 1:4, 1:4]  # (C, 3, 3) around the centre pixel
    ref = np.einsum("chw,hwco->o", patch, k) + bias
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(model.fuse.weight.detach().numpy().reshape(-1), fuse)


@pytest.mark.parametrize("low,high", [(None, None), (50.0, 150.0)])
def test_canny_batch_invariance(low, high, photos) -> None:  # noqa: ANN001
    h = CannyEdgeHandler(low=low, high=high)
    m = h.load_model()
    imgs = list(photos.values())
    together = [r.inference for r in infer((h, m), imgs)]
    for img, out in zip(imgs, together, strict=True):
        np.testing.assert_array_equal(out, infer((h, m), [img])[0].inference)


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_canny_grey_composite_is_the_rounded_alpha_blend(background) -> None:  # noqa: ANN001
    """Canny's input: the luma composited on the background's luma, (g*a + bg*(255-a) + 127) // 255
    exactly (white uses OpenCV's saturating arithmetic), within 1 of compositing RGB first."""
    import cv2

    from mmdata.models.base import to_rgb
    from mmdata.models.canny import to_grey

    rgba = np.random.default_rng(3).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 255
    grey = to_grey(rgba, background)
    g = cv2.cvtColor(rgba, cv2.COLOR_RGBA2GRAY).astype(int)
    a = rgba[:, :, 3].astype(int)
    bg = int(cv2.cvtColor(np.array([[background]], np.uint8), cv2.COLOR_RGB2GRAY)[0, 0])
    assert np.array_equal(grey, (g * a + bg * (255 - a) + 127) // 255)
    assert (grey[0] == bg).all() and np.array_equal(grey[1], g[1])
    via_rgb = cv2.cvtColor(to_rgb(rgba, background), cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(grey - via_rgb).max() <= 1
    # the handler runs Canny on exactly that luma (the conversion is the model's first step)
    from mmdata.models.canny import CannyParams, canny_edges

    h = CannyEdgeHandler(background=background)
    model = h.load_model()
    rgb = rgba[:, :, :3]
    plain = CannyParams()
    assert np.array_equal(infer((h, model), [rgba])[0].inference, canny_edges(grey, plain))
    assert np.array_equal(
        infer((h, model), [rgb])[0].inference,
        canny_edges(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), plain),
    )
