"""CMYK images with an embedded CMYK ICC profile are converted through it to sRGB (mmdata/core/image.py).

The profile is a small hand-written ICC v2 output profile (tests/iccgen.py) whose inks are impure and
gain dots, so its colours differ clearly from PIL's naive CMYK -> RGB; the reference is littleCMS's
own transform (Pillow's ImageCms) of the same CMYK pixels."""

from __future__ import annotations

import io
import time

import iccgen
import imagegen
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from mmdata.core.image import DecodedImage, decode_image
from mmdata.core.reasons import Reason

PROFILE = iccgen.cmyk_profile()


def cmyk_photo(size: int = 64) -> Image.Image:
    """A real photo as CMYK with black generation (PIL's own RGB -> CMYK leaves K at 0)."""
    rgb = np.asarray(imagegen.photo("chelsea", size), dtype=np.float64) / 255
    k = 1 - rgb.max(axis=-1)
    cmy = (1 - rgb - k[..., None]) / np.maximum(1 - k[..., None], 1e-9)
    k = 0.8 * k  # leave some of the grey in the colour inks, as a real separation does
    cmyk = np.dstack([cmy * (1 - 0.8 * k[..., None]) + 0.1 * (1 - rgb), k])
    return Image.fromarray(np.rint(np.clip(cmyk, 0, 1) * 255).astype(np.uint8), "CMYK")


def littlecms(img: Image.Image, profile: bytes = PROFILE, intent: int = 0) -> np.ndarray:
    src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    return np.asarray(ImageCms.ImageCmsTransform(src, dst, "CMYK", "RGB", intent).apply(img))


def naive(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def decoded(data: bytes) -> tuple[DecodedImage, Image.Image]:
    out = decode_image(data)
    assert not isinstance(out, Reason), out
    stored = Image.open(io.BytesIO(out.data))
    assert out.reencoded and out.format == "png" and out.mode == "RGB" and stored.mode == "RGB"
    assert out.original_mode == "CMYK"
    # sRGB, stored untagged: no CMYK profile in an RGB PNG, and no littleCMS sRGB profile either
    # (it carries its creation time)
    assert "icc_profile" not in stored.info
    return out, stored


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_test_profile_is_a_valid_cmyk_output_profile() -> None:
    profile = ImageCms.ImageCmsProfile(io.BytesIO(PROFILE)).profile
    assert profile.xcolor_space == "CMYK" and profile.connection_space == "Lab "
    assert profile.device_class == "prtr" and profile.version == 2.1
    assert profile.profile_description == "mmdata test CMYK"
    # white paper stays white, and the inks are clearly not PIL's naive ones
    white = littlecms(Image.new("CMYK", (1, 1), (0, 0, 0, 0)))[0, 0]
    assert tuple(white) == (255, 255, 255)
    cyan = littlecms(Image.new("CMYK", (1, 1), (255, 0, 0, 0)))[0, 0]
    black = littlecms(Image.new("CMYK", (1, 1), (0, 0, 0, 255)))[0, 0]
    assert cyan[0] > 60 and cyan[1] < 230  # impure cyan: reflects some red, absorbs some green
    assert black.min() > 60  # K alone is a dark grey, not 0
    img = cmyk_photo()
    assert mean_abs(littlecms(img), naive(img)) > 15


def test_cmyk_jpeg_with_profile_is_converted_through_it() -> None:
    img = cmyk_photo()
    data = imagegen.encode(img, "JPEG", quality=95, icc_profile=PROFILE)
    _, stored = decoded(data)
    got = np.asarray(stored)
    # exactly littleCMS's transform of the CMYK pixels PIL decodes from the JPEG
    np.testing.assert_array_equal(got, littlecms(Image.open(io.BytesIO(data))))
    # close to that of the pixels before JPEG: PIL undid the Adobe inversion once, not twice
    assert mean_abs(got, littlecms(img)) < 2.5
    assert mean_abs(got, naive(img)) > 15


def test_adobe_cmyk_jpeg_is_read_as_ink_amounts() -> None:
    """PIL writes (and reads) CMYK JPEGs with the Adobe APP14 marker and inverted samples, as
    Photoshop does: a flat 20 % cyan must come out as littleCMS's 20 % cyan, not its 80 % one."""
    img = Image.new("CMYK", (16, 16), (51, 0, 0, 0))
    data = imagegen.encode(img, "JPEG", quality=100, icc_profile=PROFILE)
    assert b"Adobe" in data[:200]
    _, stored = decoded(data)
    got = np.asarray(stored).reshape(-1, 3)
    expected = littlecms(img)[0, 0]
    assert np.abs(got.astype(int) - expected).max() <= 2
    inverted = littlecms(Image.new("CMYK", (1, 1), (204, 255, 255, 255)))[0, 0]
    assert np.abs(expected.astype(int) - inverted).max() > 50


def test_cmyk_tiff_with_profile_is_converted_through_it() -> None:
    img = cmyk_photo()
    _, stored = decoded(imagegen.encode(img, "TIFF", icc_profile=PROFILE))
    got = np.asarray(stored)
    np.testing.assert_array_equal(got, littlecms(img))
    assert mean_abs(got, naive(img)) > 15


def test_rotated_cmyk_jpeg_keeps_its_profile() -> None:
    """EXIF orientation is applied before the conversion; the profile must survive the transpose."""
    img = cmyk_photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    data = imagegen.encode(img, "JPEG", quality=95, icc_profile=PROFILE, exif=exif)
    _, stored = decoded(data)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert stored.size == (img.height, img.width)
    np.testing.assert_array_equal(np.asarray(stored), littlecms(upright))


@pytest.mark.parametrize(
    "intent, used",
    [
        (ImageCms.Intent.PERCEPTUAL, ImageCms.Intent.PERCEPTUAL),
        (ImageCms.Intent.RELATIVE_COLORIMETRIC, ImageCms.Intent.RELATIVE_COLORIMETRIC),
        (ImageCms.Intent.SATURATION, ImageCms.Intent.SATURATION),
        # absolute colorimetric (proofing: paper tint printed into the picture) -> perceptual
        (ImageCms.Intent.ABSOLUTE_COLORIMETRIC, ImageCms.Intent.PERCEPTUAL),
    ],
)
def test_profile_rendering_intent_is_used(intent: int, used: int) -> None:
    profile = iccgen.cmyk_profile(intent=intent)
    img = cmyk_photo(32)
    _, stored = decoded(imagegen.encode(img, "TIFF", icc_profile=profile))
    np.testing.assert_array_equal(np.asarray(stored), littlecms(img, profile, used))


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_without_profile_converts_as_before(fmt: str) -> None:
    data = imagegen.encode(cmyk_photo(), fmt)
    _, stored = decoded(data)
    np.testing.assert_array_equal(np.asarray(stored), naive(Image.open(io.BytesIO(data))))


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _broken_profiles() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, 600).astype(np.uint8).tobytes()
    no_table = bytearray(PROFILE)
    no_table[128:132] = b"\xff\xff\xff\xff"  # tag count far past the end
    short_lut = PROFILE[:-100]  # the A2B0 tag runs past the end of the profile
    return {
        "random_bytes": noise,
        "random_bytes_saying_cmyk": noise[:16] + b"CMYK" + noise[20:],
        "srgb_profile": _srgb_profile(),
        "srgb_profile_saying_cmyk": (p := _srgb_profile())[:16] + b"CMYK" + p[20:],
        "header_only": PROFILE[:128],
        "tag_table_past_end": bytes(no_table),
        "a2b0_cut": short_lut,
    }


@pytest.mark.parametrize("name", sorted(_broken_profiles()))
@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_unusable_profile_falls_back_to_naive_conversion(name: str, fmt: str) -> None:
    """Never a crash or a reject: a profile littleCMS cannot use (or one that is not CMYK) gives the
    naive conversion, as an image without a profile."""
    profile = _broken_profiles()[name]
    img = cmyk_photo(32)
    data = imagegen.encode(img, fmt, icc_profile=profile)
    assert Image.open(io.BytesIO(data)).info.get("icc_profile") == profile
    _, stored = decoded(data)
    np.testing.assert_array_equal(np.asarray(stored), naive(Image.open(io.BytesIO(data))))


def test_decode_is_deterministic() -> None:
    files = [imagegen.encode(cmyk_photo(), fmt, icc_profile=PROFILE) for fmt in ("JPEG", "TIFF")]
    first = [decoded(data)[0] for data in files]
    time.sleep(1.1)  # littleCMS stamps the profiles it creates with the time, in seconds
    second = [decoded(data)[0] for data in files]
    for a, b in zip(first, second, strict=True):
        assert a.data == b.data and a.sha256 == b.sha256
