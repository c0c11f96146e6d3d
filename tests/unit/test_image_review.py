"""Decoding of odd but real images: 16-bit PNGs, colour-key transparency, premultiplied grey, bad EXIF
orientations, float TIFFs and ICC profiles (mmdata/core/image.py)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from mmdata.core.image import decode_image
from mmdata.core.reasons import Reason

RNG = np.random.default_rng(0)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png16(arr: np.ndarray, color_type: int, trns: bytes | None = None) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB/RGBA): `arr` is (H, W[, C]) uint16."""
    h, w = arr.shape[:2]
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    extra = _chunk(b"tRNS", trns) if trns is not None else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def decoded(data: bytes):
    out = decode_image(data)
    assert not isinstance(out, Reason), out
    return out, Image.open(io.BytesIO(out.data))


@pytest.mark.parametrize("channels, color_type, mode", [(3, 2, "RGB"), (4, 6, "RGBA")])
def test_16_bit_rgb_pngs_are_stored_as_8_bit(channels: int, color_type: int, mode: str) -> None:
    """PIL reads a 16-bit RGB(A) PNG as 8-bit RGB(A): its bytes were kept as they were, a 16-bit
    file recorded as 8-bit RGB."""
    arr = RNG.integers(0, 65536, (12, 20, channels)).astype(np.uint16)
    if channels == 4:
        arr[..., 3] = 65535
        arr[0, 0, 3] = 0
    out, img = decoded(png16(arr, color_type))
    assert out.reencoded and out.format == "png" and out.mode == mode
    assert out.data[24] == 8  # IHDR bit depth
    assert img.mode == mode
    np.testing.assert_array_equal(np.asarray(img), (arr >> 8).astype(np.uint8))


def test_8_bit_png_still_keeps_its_bytes() -> None:
    data = encode(Image.fromarray(RNG.integers(0, 256, (12, 20, 3)).astype(np.uint8)))
    out, _ = decoded(data)
    assert out.data is data and not out.reencoded


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_colour_key_transparency_becomes_alpha(mode: str) -> None:
    """A grey or RGB PNG with a tRNS colour key has transparent pixels: they were lost (grey) or
    stored as "RGB" with the key still in the file (RGB)."""
    shape = (12, 20) if mode == "L" else (12, 20, 3)
    arr = RNG.integers(1, 256, shape).astype(np.uint8)
    arr[:4] = 0  # the keyed colour
    key = 0 if mode == "L" else (0, 0, 0)
    out, img = decoded(encode(Image.fromarray(arr, mode), transparency=key))
    assert out.mode == "RGBA" and img.mode == "RGBA" and "transparency" not in img.info
    alpha = np.asarray(img.getchannel("A"))
    assert (alpha[:4] == 0).all() and (alpha[4:] == 255).all()


def test_16_bit_grey_with_transparent_value_becomes_alpha() -> None:
    arr = RNG.integers(1, 65536, (12, 20)).astype(np.uint16)
    arr[:3] = 1234
    out, img = decoded(png16(arr, 0, trns=struct.pack(">H", 1234)))
    alpha = np.asarray(img.getchannel("A"))
    assert out.mode == "RGBA" and (alpha[:3] == 0).all() and (alpha[3:] == 255).all()


def test_premultiplied_grey_alpha_tiff_is_kept_with_its_alpha() -> None:
    """PIL opens a grey TIFF with associated alpha as mode "La", which it cannot convert to RGBA
    directly: such files were `unsupported_mode` rejects."""
    grey = RNG.integers(0, 256, (12, 20)).astype(np.uint8)
    alpha = np.full((12, 20), 128, np.uint8)
    alpha[0, 0] = 0
    buf = io.BytesIO()
    premultiplied = (grey.astype(np.uint16) * alpha // 255).astype(np.uint8)
    tifffile.imwrite(buf, np.stack([premultiplied, alpha], -1), extrasamples=[1])
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "La"
    out, img = decoded(buf.getvalue())
    rgba = np.asarray(img).astype(int)
    assert out.mode == "RGBA" and rgba[0, 0, 3] == 0
    assert np.abs(rgba[1:, :, 0] - grey[1:]).max() <= 2 and (rgba[1:, :, 3] == 128).all()


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_invalid_exif_orientation_is_upright_and_keeps_the_jpeg(orientation: int) -> None:
    """Orientation 0 is common in camera files; it is not a rotation, and such JPEGs were re-encoded
    as PNG (several times larger) for nothing."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(
        Image.fromarray(RNG.integers(0, 256, (12, 20, 3)).astype(np.uint8)), "JPEG", exif=exif
    )
    out, _ = decoded(data)
    assert out.data is data and out.format == "jpeg" and (out.width, out.height) == (20, 12)


def test_valid_exif_orientation_still_rotates() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(
        Image.fromarray(RNG.integers(0, 256, (12, 20, 3)).astype(np.uint8)), "JPEG", exif=exif
    )
    out, _ = decoded(data)
    assert out.format == "png" and (out.width, out.height) == (12, 20)


def test_float_image_in_unit_range_is_not_stretched() -> None:
    """A flat dark float image (values ~0.2) was min-max stretched to full contrast."""
    arr = np.full((12, 20), 0.2, np.float32)
    arr[0, 0] = 0.21
    _, img = decoded(encode(Image.fromarray(arr), "TIFF"))
    grey = np.asarray(img)[..., 0]
    assert grey[1:].max() == 51 and grey[0, 0] == 54


def test_float_image_outside_unit_range_uses_its_range() -> None:
    arr = np.linspace(-5.0, 5.0, 240, dtype=np.float32).reshape(12, 20)
    _, img = decoded(encode(Image.fromarray(arr), "TIFF"))
    grey = np.asarray(img)[..., 0]
    assert grey.min() == 0 and grey.max() == 255


def _profile(colour_space: bytes) -> bytes:
    return bytes(16) + colour_space + bytes(108)  # only the header field the decoder reads


@pytest.mark.parametrize("mode, colour_space", [("CMYK", b"CMYK"), ("L", b"GRAY")])
def test_profile_of_another_colour_space_is_not_put_in_the_rgb_png(
    mode: str, colour_space: bytes
) -> None:
    """A CMYK or grey ICC profile was copied into the converted RGB PNG (a profile that does not
    describe the pixels; colour-managed readers reject or misapply it)."""
    img = Image.fromarray(RNG.integers(0, 256, (12, 20, 3)).astype(np.uint8)).convert(mode)
    out, stored = decoded(encode(img, "JPEG", icc_profile=_profile(colour_space)))
    assert out.mode == "RGB" and "icc_profile" not in stored.info


def test_rgb_profile_survives_re_encoding() -> None:
    exif = Image.Exif()
    exif[0x0112] = 3
    img = Image.fromarray(RNG.integers(0, 256, (12, 20, 3)).astype(np.uint8))
    data = encode(img, "JPEG", exif=exif, icc_profile=_profile(b"RGB "))
    out, stored = decoded(data)
    assert out.reencoded and stored.info["icc_profile"][16:20] == b"RGB "
