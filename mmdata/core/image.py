"""Decode, check and normalise one encoded image.

Policy (also in README, "Images"):
- Refused unread: empty files (`empty_file`), files over `max_file_bytes` (`file_too_large`).
- Refused from the header, before any pixel is decoded: more than `max_pixels` pixels or a side over `max_side`
  (`decompression_bomb`), so a 50k x 50k PNG of a few KB never allocates gigabytes.
- Not decodable: `not_an_image` (no known image signature), `truncated_image` (data ends early),
  `corrupt_image` (anything else the decoder raises). Whether data ends early is read from the format's
  own structure, not from PIL's message (which often names no cause): data whose whole fixed header
  shows a PNG, JPEG, GIF, WebP, TIFF or BMP signature is an image, and truncated when it stops before
  its format's end (no PNG IEND, no JPEG EOI after the scan, no GIF trailer, a RIFF/BMP size or a TIFF
  offset past the end).
- Normalised on purpose: EXIF orientation applied (values outside 2-8 are invalid and read as upright);
  CMYK, YCbCr, LAB, HSV, palette without transparency, 1-bit and greyscale -> RGB; palette with
  transparency, LA, PA, premultiplied alpha (RGBa, La) and a greyscale or RGB PNG with a transparent colour
  (tRNS) -> RGBA (alpha is kept: it is a free mask); 16-bit (RGB, RGBA and greyscale PNGs included) and
  32-bit integer or float greyscale are rescaled to 8 bits (float in [0, 1] by x255, other floats by their
  range); animations keep their first frame (also when later frames are damaged). A fully opaque
  alpha channel is dropped (RGB). CMYK with an embedded CMYK ICC profile is converted through it to sRGB
  (littleCMS, the profile's rendering intent; absolute colorimetric is read as perceptual); without
  one, or with one littleCMS cannot use, it gets PIL's naive conversion (R = 255 (1 - C)(1 - K)
  on 0-1 ink amounts, likewise G and B).
- Re-encoding: original bytes are kept when the image is already an 8-bit RGB/RGBA JPEG, PNG or WebP that
  needed no change; everything else is re-encoded as PNG (lossless, deterministic). A re-encoded PNG keeps
  an RGB ICC profile; a profile of another colour space (CMYK, grey) no longer describes the RGB pixels
  and is left out, as is every other chunk of the original (text, tRNS, EXIF). A CMYK image's RGB is
  stored untagged (sRGB after its profile; an RGB profile on CMYK data describes none of its pixels).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmdata.core.reasons import Reason

KEEP_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}
# EXIF orientations that move pixels; 1 is upright, anything else (0, 9, garbage) is invalid.
_MOVING_ORIENTATIONS = frozenset(range(2, 9))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_bit_depth(data: bytes) -> int | None:
    """The IHDR bit depth of PNG bytes (PIL reads a 16-bit RGB/RGBA PNG as 8-bit RGB/RGBA)."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return None


@dataclass
class DecodedImage:
    """A checked image: encoded bytes to store plus what later stages need."""

    data: bytes
    format: str  # png | jpeg | webp
    mode: str  # RGB | RGBA
    width: int
    height: int
    sha256: str
    reencoded: bool
    original_format: str
    original_mode: str


def _allow_pixels(max_pixels: int) -> None:
    """Let PIL open images up to `max_pixels` (the limit mmdata checks from the header itself).

    PIL refuses an image over 2 x `Image.MAX_IMAGE_PIXELS` (about 179 M pixels by default) when it
    opens it. mmdata's default `max_pixels` (64 M) is below that, so PIL's process-wide setting is left
    as it is (importing mmdata does not switch off a user's own protection); only a job configured
    for larger images lifts it, to the configured limit."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is not None and max_pixels >= 2 * pil_limit:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def decode_image(
    data: bytes | None,
    max_file_bytes: int = 64 * 1024 * 1024,
    max_pixels: int = 64_000_000,
    max_side: int = 20_000,
    reduced_jpeg_check: bool = True,
) -> DecodedImage | Reason:
    """Decode and normalise an encoded image, or say why it cannot be used.

    `reduced_jpeg_check`: an upright 8-bit RGB JPEG (kept byte for byte) is decoded at 1/8 scale, which
    checks the whole entropy-coded stream about 3x faster; False decodes it at full size (the same
    result: tests compare both on good and damaged files)."""
    if not data:
        return Reason("empty_file", "zero bytes")
    if len(data) > max_file_bytes:
        return Reason("file_too_large", f"{len(data)} bytes > {max_file_bytes}")
    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # PIL's DecompressionBombWarning: our limit applies below
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        return Reason("decompression_bomb", f"{e} (over PIL's own limit, before ours)")
    except UnidentifiedImageError:
        fmt = _image_format(data)
        if fmt is None:
            return Reason("not_an_image", f"unrecognised image data (starts {data[:8]!r})")
        # A known signature is an image PIL cannot open: cut short (often inside its header) or damaged.
        reason = "truncated_image" if _looks_truncated(data) else "corrupt_image"
        return Reason(reason, f"{fmt} signature, PIL cannot open it ({len(data)} bytes)")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a reject, not a crash
        return _decode_error(e, data)
    w, h = img.size
    if w <= 0 or h <= 0:
        return Reason("corrupt_image", f"invalid size {w}x{h}")
    if w * h > max_pixels or max(w, h) > max_side:
        return Reason(
            "decompression_bomb", f"{w}x{h} exceeds {max_pixels} pixels or side {max_side}"
        )
    original_format, original_mode = img.format or "", img.mode
    # Counting frames reads every frame's header (every IFD of a TIFF) and fails on damage after the
    # first frame, as any PIL call can on damaged data (TypeError, KeyError, SyntaxError...).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n_frames = getattr(img, "n_frames", 1)
    except Exception:  # noqa: BLE001
        # Later frames damaged: keep the whole first frame (the only one stored), re-encoded.
        n_frames = 2
        try:  # the failed seek left PIL on the broken frame: start again from the first
            img = Image.open(io.BytesIO(data))
        except Exception as e:  # noqa: BLE001
            return _decode_error(e, data)
    reduced = False
    low: Image.Image | None = None  # low bytes of a colour-keyed 16-bit RGB PNG
    # Only PIL calls (reading EXIF, draft, load, transpose) are in this try, and any exception from
    # them is a decode reject: PIL's parsers raise what they hit on damaged data (OSError,
    # SyntaxError, ValueError, TypeError, KeyError, struct.error...), not a bounded set of types.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = img.getexif().get(0x0112, 1)
            moves = orientation in _MOVING_ORIENTATIONS
            if reduced_jpeg_check and original_format == "JPEG" and img.mode == "RGB":
                # Kept byte for byte: its pixels are not needed, only proof that the whole scan
                # decodes. libjpeg's 1/8 DCT scaling still entropy-decodes every coefficient (a
                # truncated or broken stream fails the same way) and skips most of the IDCT.
                if not moves:
                    img.draft("RGB", (-(-w // 8), -(-h // 8)))
                    reduced = True
            img.load()
            rotated = ImageOps.exif_transpose(img) if moves else img
            key = img.info.get("transparency")
            if (
                original_format == "PNG"
                and img.mode == "RGB"
                and isinstance(key, tuple)
                and _png_bit_depth(data) == 16
            ):
                low = _png_rgb16_low_bytes(data)
                low = ImageOps.exif_transpose(low) if moves else low
    except Exception as e:  # noqa: BLE001
        return _decode_error(e, data)
    if reduced:  # RGB, upright, one frame: kept as it is, at the size the header gave
        return DecodedImage(
            data=data,
            format="jpeg",
            mode="RGB",
            width=w,
            height=h,
            sha256=hashlib.sha256(data).hexdigest(),
            reencoded=False,
            original_format="jpeg",
            original_mode="RGB",
        )
    changed = rotated is not img
    img = rotated
    if low is not None:
        img, changed = _rgb16_colour_key(img, low, key), True
    try:
        out, mode_changed = normalise_mode(img)
    except Exception as e:  # noqa: BLE001
        return Reason("unsupported_mode", f"mode {original_mode}: {type(e).__name__}: {e}")
    changed = changed or mode_changed or n_frames > 1
    changed = changed or (original_format == "PNG" and _png_bit_depth(data) == 16)
    if not changed and original_format in KEEP_FORMATS:
        encoded, fmt = data, KEEP_FORMATS[original_format]
    else:
        encoded, fmt = _encode_png(out), "png"
    return DecodedImage(
        data=encoded,
        format=fmt,
        mode=out.mode,
        width=out.width,
        height=out.height,
        sha256=hashlib.sha256(encoded).hexdigest(),
        reencoded=encoded is not data,
        original_format=original_format.lower(),
        original_mode=original_mode,
    )


def _png_rgb16_low_bytes(data: bytes) -> Image.Image:
    """The low bytes of a 16-bit RGB PNG's samples, as an RGB image.

    PIL reads such a PNG as 8-bit RGB, the high byte of each sample (its "RGB;16B" unpacker). The
    same data decoded with the "RGB;16L" unpacker (same 6-byte pixels for the PNG filters and
    interlacing) takes the other byte of each big-endian sample."""
    low = Image.open(io.BytesIO(data))
    if low.mode != "RGB" or any(t.args != "RGB;16B" for t in low.tile):
        raise ValueError(f"unexpected 16-bit RGB PNG layout {low.mode} {low.tile}")
    low.tile = [t._replace(args="RGB;16L") for t in low.tile]
    low.load()
    return low


def _rgb16_colour_key(high: Image.Image, low: Image.Image, key: tuple[int, ...]) -> Image.Image:
    """RGBA of a 16-bit RGB PNG with a tRNS colour: alpha 0 exactly where the 16-bit samples equal
    the 16-bit key (PIL would compare its 8-bit pixels with it), RGB the high bytes (as without a
    key)."""
    rgb = np.asarray(high)
    samples = rgb.astype(np.uint16) << 8 | np.asarray(low).astype(np.uint16)
    keyed = (samples == np.asarray(key, dtype=np.uint16)).all(axis=-1)
    alpha = np.where(keyed, 0, 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    rgba.info = {k: v for k, v in high.info.items() if k != "transparency"}  # ICC profile
    return rgba


def _encode_png(img: Image.Image) -> bytes:
    """Lossless, deterministic PNG of an RGB/RGBA image: pixels plus an RGB ICC profile, nothing else.

    PIL carries the source's `info` through conversions and its PNG writer would copy some of it
    (a CMYK or grey ICC profile into an RGB PNG, a tRNS colour key the alpha channel replaced)."""
    icc = img.info.get("icc_profile")
    img.info = {}
    buf = io.BytesIO()
    if isinstance(icc, bytes) and icc[16:20] == b"RGB ":
        img.save(buf, format="PNG", compress_level=6, icc_profile=icc)
    else:
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _decode_error(e: Exception, data: bytes) -> Reason:
    msg = f"{type(e).__name__}: {e}"
    # The structure first: PIL reports many cuts without saying so ("decoder error -2", "could not
    # create decoder object"); its message is the fallback for damage the structure check cannot see.
    if _looks_truncated(data):
        return Reason("truncated_image", msg)
    if any(
        t in msg.lower() for t in ("truncated", "broken data stream", "unexpected end", "eoferror")
    ):
        return Reason("truncated_image", msg)
    return Reason("corrupt_image", msg)


def _image_format(data: bytes) -> str | None:
    """The format whose signature starts `data`, or None.

    The format's whole fixed file header must be there, not only its magic (GIF: the 13-byte header
    with the screen size; BMP: the 14-byte file header, reserved fields zero, as `BM` alone starts text
    too): a shorter prefix stays `not_an_image`."""
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 13:
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*") and len(data) >= 8:
        return "tiff"
    if data[:2] == b"BM" and len(data) >= 14 and data[6:10] == b"\x00" * 4:
        return "bmp"
    return None


def _looks_truncated(data: bytes) -> bool | None:
    """Whether image data stops before its format says it ends: True (data ends early), False (its
    end is there: any damage is elsewhere) or None (no known signature, or a structure too damaged to
    follow). Cheap: it reads headers, markers and length fields, and decodes nothing."""
    check = _TRUNCATION_CHECKS.get(_image_format(data) or "")
    if check is None:
        return None
    try:
        return check(data)
    except (IndexError, struct.error):  # a field read past the last byte: the data stops early
        return True


def _png_truncated(data: bytes) -> bool:
    # IEND is the last chunk (type and CRC); bytes after it are harmless junk.
    i = data.rfind(b"IEND", 12)
    return i < 0 or len(data) < i + 8


def _jpeg_truncated(data: bytes) -> bool | None:
    # Walk the marker segments to the first scan (an EXIF thumbnail's own SOS and EOI sit inside
    # APP1, skipped), then look for EOI anywhere after it: trailing bytes after EOI are common, and
    # byte stuffing (FF00) keeps FFD9 out of entropy-coded data.
    pos = 2
    while True:
        if data[pos] != 0xFF:
            return None  # not a marker: damaged, not short
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:
            return False
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            (length,) = struct.unpack_from(">H", data, pos + 2)
            if marker == 0xDA:
                return data.find(b"\xff\xd9", pos + 2 + length) < 0
            pos += 2 + length


def _gif_truncated(data: bytes) -> bool | None:
    # Walk the blocks to the ";" trailer (PIL decodes a GIF without one, so only a decode failure
    # gets here); sub-blocks are skipped by their length bytes.
    def colour_table(flags: int) -> int:
        return 3 << ((flags & 7) + 1) if flags & 0x80 else 0

    pos = 13 + colour_table(data[10])
    while True:
        block = data[pos]
        if block == 0x3B:
            return False
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image: descriptor, local colour table, LZW code size, sub-blocks
            pos += 10 + colour_table(data[pos + 9]) + 1
        else:
            return None
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1


def _webp_truncated(data: bytes) -> bool:
    return struct.unpack_from("<I", data, 4)[0] + 8 > len(data)  # RIFF size: all bytes after it


def _bmp_truncated(data: bytes) -> bool:
    size, pixels = struct.unpack_from("<I4xI", data, 2)  # file size, offset of the pixel array
    return size > len(data) or pixels > len(data)


# TIFF field type -> bytes per value (BYTE, ASCII, SHORT, LONG, RATIONAL, signed ones, FLOAT, DOUBLE,
# IFD, and the 8-byte BigTIFF types).
_TIFF_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
}
_TIFF_TYPE_SIZES.update({16: 8, 17: 8, 18: 8})


def _tiff_truncated(data: bytes) -> bool:
    # The first page only (PIL keeps it when later pages are damaged). Compressed TIFFs written by
    # PIL (libtiff) put the IFD after the pixel data, so a cut usually loses the IFD itself; otherwise
    # a value stored outside the IFD (BitsPerSample, JPEGTables...) or a strip or tile may be cut.
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(e + "I", data, 4)
    (n,) = struct.unpack_from(e + "H", data, ifd)
    struct.unpack_from(e + "I", data, ifd + 2 + 12 * n)  # next-IFD offset: the IFD is whole
    arrays: dict[int, tuple[int, ...]] = {}
    for i in range(n):
        entry = ifd + 2 + 12 * i
        tag, typ, count = struct.unpack_from(e + "HHI", data, entry)
        size, where = _TIFF_TYPE_SIZES.get(typ, 0) * count, entry + 8
        if size > 4:  # stored elsewhere, at the offset in the entry
            (where,) = struct.unpack_from(e + "I", data, where)
            if where + size > len(data):
                return True
        if tag in (273, 279, 324, 325) and typ in (3, 4):  # strip/tile offsets and byte counts
            arrays[tag] = struct.unpack_from(f"{e}{count}{'H' if typ == 3 else 'I'}", data, where)
    return any(
        o + c > len(data)
        for offsets, counts in ((273, 279), (324, 325))
        for o, c in zip(arrays.get(offsets, ()), arrays.get(counts, ()), strict=False)
    )


_TRUNCATION_CHECKS: dict[str, Callable[[bytes], bool | None]] = {
    "png": _png_truncated,
    "jpeg": _jpeg_truncated,
    "gif": _gif_truncated,
    "webp": _webp_truncated,
    "tiff": _tiff_truncated,
    "bmp": _bmp_truncated,
}


def normalise_mode(img: Image.Image) -> tuple[Image.Image, bool]:
    """Convert any PIL mode to 8-bit RGB or RGBA. Returns (image, changed)."""
    mode = img.mode
    if mode in ("L", "RGB") and "transparency" in img.info:  # tRNS: one colour is transparent
        return normalise_mode(img.convert("RGBA"))[0], True
    if mode == "RGB":
        return img, False
    if mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() == 255:
            return img.convert("RGB"), True
        return img, False
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        trns = img.info.get("transparency")
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "I":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (
                arr / 257.0 if lo >= 0 and hi <= 65535 else (arr - lo) / max(hi - lo, 1e-9) * 255.0
            )
        else:
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            # Float images are conventionally in [0, 1]; stretching those by their own range would
            # turn a flat dark image into a full-contrast one.
            if lo >= 0.0 and hi <= 1.0:
                arr = arr * 255.0
            else:
                arr = (arr - lo) / max(hi - lo, 1e-9) * 255.0
            arr = np.nan_to_num(arr, nan=0.0)
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
        if isinstance(trns, int) and mode.startswith("I;16"):  # 16-bit grey PNG with a tRNS value
            alpha = np.where(np.asarray(img) == trns, 0, 255).astype(np.uint8)
            rgba = Image.merge("RGBA", [grey, grey, grey, Image.fromarray(alpha, "L")])
            return normalise_mode(rgba)[0], True
        return grey.convert("RGB"), True
    if mode == "P":
        has_alpha = (
            "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        )
        if has_alpha:
            return normalise_mode(img.convert("RGBA"))[0], True
        return img.convert("RGB"), True
    if mode == "La":  # premultiplied grey + alpha (TIFF): PIL converts it to LA only
        img = img.convert("LA")
    if mode in ("LA", "PA", "RGBa", "La"):
        return normalise_mode(img.convert("RGBA"))[0], True
    if mode == "CMYK":
        return _cmyk_to_rgb(img), True
    # L, 1, YCbCr, LAB, HSV
    return img.convert("RGB"), True


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK -> RGB through the image's own CMYK ICC profile, or PIL's naive formula without one.

    Print-origin photos (Photoshop CMYK JPEGs) carry the profile their inks were separated for; the
    naive formula ignores it and gives visibly wrong colours (pure inks, no dot gain, pure black K).
    PIL has already undone the Adobe inversion of CMYK JPEGs, so the pixels are plain ink amounts
    (0 = no ink), what littleCMS expects. A profile that cannot be used (damaged, another colour
    space, a littleCMS error) falls back to the naive formula: a decodable image is never rejected
    for its profile."""
    icc = img.info.get("icc_profile")
    if isinstance(icc, bytes) and icc[16:20] == b"CMYK":  # the header's data colour space
        try:
            return _icc_cmyk_to_srgb(img, icc)
        except Exception:  # noqa: BLE001 - ImageCms raises PyCMSError, OSError, ValueError...
            pass
    rgb = img.convert("RGB")
    # Whatever profile it carries describes no RGB pixels (an RGB profile on CMYK data is a mislabel)
    rgb.info.pop("icc_profile", None)
    return rgb


def _icc_cmyk_to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    # Imported here: a Pillow built without littleCMS then only loses this conversion.
    from PIL import ImageCms

    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    intent = src.profile.rendering_intent
    # Absolute colorimetric would print the paper's tint into the picture (it is meant for proofs);
    # a photo to look at is rendered perceptually. lcms uses A2B0 for a missing intent table.
    if intent not in (ImageCms.Intent.RELATIVE_COLORIMETRIC, ImageCms.Intent.SATURATION):
        intent = ImageCms.Intent.PERCEPTUAL
    dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out = ImageCms.ImageCmsTransform(src, dst, "CMYK", "RGB", intent).apply(img)
    # Stored untagged (an untagged PNG is sRGB): littleCMS's own sRGB profile carries its creation
    # time, which would make the re-encoded bytes differ from one run to the next.
    out.info = {}
    return out


def load_pixels(data: bytes) -> np.ndarray:
    """Decode already-checked image bytes to an (H, W, 3) RGB or (H, W, 4) RGBA uint8 array."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return np.asarray(img if img.mode in ("RGB", "RGBA") else img.convert("RGBA"))


def load_rgb_array(data: bytes, background: int = 255) -> np.ndarray:
    """Decode already-checked image bytes to an (H, W, 3) uint8 array, alpha composited on `background`."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (background, background, background, 255))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"))
