"""Damaged and unusual image data in decode_image (mmdata/core/image.py): 16-bit RGB PNGs with a
tRNS colour key, multi-page TIFFs damaged after their first page, and a small deterministic fuzz.
Undecodable data must come back as a decode Reason, never as an exception."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, features

from mmdata.core.image import DecodedImage, _looks_truncated, decode_image, load_pixels
from mmdata.core.reasons import Reason

DECODE_REASONS = {"not_an_image", "truncated_image", "corrupt_image", "decompression_bomb"}
# Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = [
    (0, 0, 8, 8),
    (0, 4, 8, 8),
    (4, 0, 8, 4),
    (0, 2, 4, 4),
    (2, 0, 4, 2),
    (0, 1, 2, 2),
    (1, 0, 2, 1),
]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _filtered_rows(arr: np.ndarray, filter_type: int) -> bytes:
    """PNG scanlines of (H, W, 3) uint16: big-endian samples, filter None (0), Sub (1) or Up (2)."""
    rows = arr.astype(">u2").reshape(arr.shape[0], -1).view(np.uint8).astype(np.int16)
    out = []
    for y, row in enumerate(rows):
        if filter_type == 1:  # Sub: minus the same byte of the pixel before (6 bytes back)
            row = row - np.concatenate([np.zeros(6, np.int16), row[:-6]])
        elif filter_type == 2:  # Up: minus the same byte of the row above
            row = row - (rows[y - 1] if y else 0)
        out.append(bytes([filter_type]) + (row % 256).astype(np.uint8).tobytes())
    return b"".join(out)


def rgb16_png(
    arr: np.ndarray,
    key: tuple[int, int, int] | None,
    filter_type: int = 0,
    interlace: bool = False,
    exif: bytes | None = None,
) -> bytes:
    """A 16-bit RGB PNG written by hand (PIL cannot write one), with an optional tRNS colour key."""
    h, w = arr.shape[:2]
    if interlace:
        passes = [arr[y0::dy, x0::dx] for y0, x0, dy, dx in _ADAM7]
        raw = b"".join(_filtered_rows(p, filter_type) for p in passes if p.size)
    else:
        raw = _filtered_rows(arr, filter_type)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + (_chunk(b"tRNS", struct.pack(">HHH", *key)) if key is not None else b"")
        + (_chunk(b"eXIf", exif) if exif is not None else b"")
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _keyed_array(key: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A (12, 20, 3) uint16 image with the key in its top rows, near misses (same high bytes,
    other low bytes; two channels of three equal) elsewhere; and where the key is."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 65536, (12, 20, 3)).astype(np.uint16)
    arr[:3] = key
    k = np.array(key, dtype=np.uint16)
    arr[3] = k ^ np.array([1, 0, 0], np.uint16)  # one low bit off in red
    arr[4] = (k & 0xFF00) | (~k & 0x00FF)  # same high bytes (PIL's 8-bit pixels), other low bytes
    arr[5] = np.array(key[:2] + ((key[2] + 1) % 65536,), np.uint16)
    keyed = (arr == k).all(axis=-1)
    return arr, keyed


def _decoded(data: bytes) -> tuple[DecodedImage, Image.Image]:
    out = decode_image(data)
    assert isinstance(out, DecodedImage), out
    return out, Image.open(io.BytesIO(out.data))


@pytest.mark.parametrize("key", [(65535, 65535, 65535), (1000, 2000, 3000), (255, 255, 255)])
@pytest.mark.parametrize("filter_type, interlace", [(0, False), (1, False), (2, True)])
def test_16_bit_rgb_colour_key_gives_exact_alpha(
    key: tuple[int, int, int], filter_type: int, interlace: bool
) -> None:
    """PIL reads a 16-bit RGB PNG as 8-bit RGB but keeps the 16-bit key: its 8-bit comparison made
    16-bit white opaque where the key was (255, 255, 255) (alpha inverted) and dropped a key like
    (1000, 2000, 3000) altogether. Alpha is 0 exactly where the 16-bit samples equal the key."""
    arr, keyed = _keyed_array(key, seed=sum(key) + filter_type)
    if key == (255, 255, 255):
        arr[6:] = (
            65535  # the auditor's case: 16-bit white is opaque, the near-black key transparent
        )
        keyed = (arr == key).all(axis=-1)
    out, img = _decoded(rgb16_png(arr, key, filter_type, interlace))
    assert out.mode == "RGBA" and img.mode == "RGBA" and out.format == "png" and out.reencoded
    assert "transparency" not in img.info and out.data[24] == 8  # 8-bit, alpha channel, no tRNS
    rgba = np.asarray(img)
    np.testing.assert_array_equal(rgba[..., 3], np.where(keyed, 0, 255))
    # RGB like a 16-bit RGB PNG without a key: the high byte of each sample.
    np.testing.assert_array_equal(rgba[..., :3], (arr >> 8).astype(np.uint8))


def test_16_bit_rgb_colour_key_matching_no_pixel_is_plain_rgb() -> None:
    arr, keyed = _keyed_array((1000, 2000, 3000), seed=1)
    arr[:3] = 0
    out, img = _decoded(rgb16_png(arr, (1000, 2000, 3000)))
    assert out.mode == "RGB" and img.mode == "RGB"  # a fully opaque alpha is dropped
    np.testing.assert_array_equal(np.asarray(img), (arr >> 8).astype(np.uint8))
    # The same pixels without a key decode the same.
    _, plain = _decoded(rgb16_png(arr, None))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(img))


def test_16_bit_rgb_colour_key_follows_exif_rotation() -> None:
    """The alpha mask is turned with the pixels (orientation 6: 90 degrees clockwise)."""
    arr, keyed = _keyed_array((1000, 2000, 3000), seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6
    out, img = _decoded(rgb16_png(arr, (1000, 2000, 3000), exif=exif.tobytes()[6:]))
    assert (out.width, out.height) == (12, 20) and out.mode == "RGBA"
    rgba = np.asarray(img)
    np.testing.assert_array_equal(rgba[..., 3], np.rot90(np.where(keyed, 0, 255), k=-1))
    np.testing.assert_array_equal(rgba[..., :3], np.rot90((arr >> 8).astype(np.uint8), k=-1))


def _multipage_tiff() -> tuple[bytes, list[np.ndarray], list[int]]:
    """A 3-page RGB TIFF, its pages, and where each page's IFD starts (PIL writes IFD then data)."""
    rng = np.random.default_rng(3)
    pages = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(3)]
    frames = [Image.fromarray(p) for p in pages]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 3 and data[:4] == b"II*\x00"
    ifds = [struct.unpack_from("<I", data, 4)[0]]  # each IFD: entry count, 12-byte entries, next
    while len(ifds) < 3:
        (entries,) = struct.unpack_from("<H", data, ifds[-1])
        ifds.append(struct.unpack_from("<I", data, ifds[-1] + 2 + 12 * entries)[0])
    return data, pages, ifds


@pytest.mark.parametrize("into_page_2", [10, 200])  # inside its IFD, inside its pixel data
def test_multipage_tiff_cut_inside_page_2_keeps_its_first_page(into_page_2: int) -> None:
    """Counting frames ran outside the decode try and seeks through every IFD: a TIFF cut inside
    page 2 raised SyntaxError/TypeError out of decode_image (an `unexpected_error` with a
    traceback). The first page is whole and decoded; it is kept, as the first frame of any
    multi-frame image is."""
    data, pages, ifds = _multipage_tiff()
    cut = data[: ifds[1] + into_page_2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):  # noqa: B017 - PIL raises several types here
            _ = Image.open(io.BytesIO(cut)).n_frames
    out, img = _decoded(cut)
    assert out.format == "png" and out.reencoded and out.original_format == "tiff"
    assert (out.width, out.height) == (24, 16) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), pages[0])


def test_multipage_tiff_cut_inside_page_1_is_truncated() -> None:
    data, _, ifds = _multipage_tiff()
    out = decode_image(data[: ifds[1] - 100])  # inside page 1's pixel data
    assert isinstance(out, Reason) and out.reason == "truncated_image", out


def _fuzz_samples(rng: np.random.Generator) -> dict[str, bytes]:
    def enc(frames: list[Image.Image], fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        if len(frames) > 1:
            kw.update(save_all=True, append_images=frames[1:])
        frames[0].save(buf, fmt, **kw)
        return buf.getvalue()

    def rgb(n: int) -> list[Image.Image]:
        return [
            Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)) for _ in range(n)
        ]

    key_arr, _ = _keyed_array((1000, 2000, 3000), seed=4)
    samples = {
        "tiff": enc(rgb(1), "TIFF"),
        "tiff_3_pages": enc(rgb(3), "TIFF"),
        "tiff_lzw_2_pages": enc(rgb(2), "TIFF", compression="tiff_lzw"),
        "png": enc(rgb(1), "PNG"),
        "apng": enc(rgb(2), "PNG"),
        "png16_rgb_trns": rgb16_png(key_arr, (1000, 2000, 3000), filter_type=1),
        "jpeg": enc(rgb(1), "JPEG"),
        "gif_3_frames": enc([f.convert("P") for f in rgb(3)], "GIF"),
    }
    if features.check("webp"):
        samples["webp"] = enc(rgb(1), "WEBP")
        samples["webp_2_frames"] = enc(rgb(2), "WEBP", lossless=True)
    return samples


def test_damaged_images_are_decode_rejects_never_exceptions() -> None:
    """Fixed-seed fuzz: truncations and 1-3 byte flips of small files. decode_image never raises
    (TIFFs raised TypeError, KeyError and SyntaxError); it returns an image it can store or a
    decode reason."""
    rng = np.random.default_rng(20261203)
    outcomes: dict[str, set[str]] = {}
    for name, data in _fuzz_samples(rng).items():
        cases = [data[: int(n)] for n in rng.integers(1, len(data), 12)]
        for _ in range(30):
            flipped = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                flipped[int(rng.integers(0, len(flipped)))] = int(rng.integers(0, 256))
            cases.append(bytes(flipped))
        for case in cases:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = decode_image(case)
            if isinstance(out, Reason):
                assert out.reason in DECODE_REASONS, (name, out)
                outcomes.setdefault(name, set()).add(out.reason)
            else:
                assert isinstance(out, DecodedImage) and out.mode in ("RGB", "RGBA"), (name, out)
                pixels = load_pixels(out.data)
                assert pixels.shape == (out.height, out.width, len(out.mode)), name
                outcomes.setdefault(name, set()).add("decoded")
    # The fuzz reaches both sides: some damage is harmless (a flip in pixel data), most is rejected.
    seen = set().union(*outcomes.values())
    assert "decoded" in seen and {"truncated_image", "corrupt_image"} <= seen, outcomes


def _noise_image(mode: str = "RGB") -> Image.Image:
    """32x24 of noise: compressed formats keep most of its bytes, so cuts land in pixel data."""
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).convert(mode)


def _encode(fmt: str) -> bytes:
    """One small file per format and writer layout. PIL's compressed TIFFs (libtiff) put the IFD after
    the pixel data; its uncompressed ones put it first."""
    kw = {
        "tiff_lzw": {"compression": "tiff_lzw"},
        "tiff_deflate": {"compression": "tiff_adobe_deflate"},
        "tiff_jpeg": {"compression": "jpeg"},
        "jpeg_progressive": {"progressive": True},
    }.get(fmt, {})
    buf = io.BytesIO()
    _noise_image("P" if fmt == "gif" else "RGB").save(buf, fmt.split("_")[0].upper(), **kw)
    return buf.getvalue()


_CUT_FORMATS = [
    "png",
    "jpeg",
    "jpeg_progressive",
    "gif",
    pytest.param("webp", marks=pytest.mark.skipif(not features.check("webp"), reason="no WebP")),
    "tiff",
    *(
        pytest.param(
            f, marks=pytest.mark.skipif(not features.check("libtiff"), reason="no libtiff")
        )
        for f in ("tiff_lzw", "tiff_deflate", "tiff_jpeg")
    ),
    "bmp",
]


@pytest.mark.parametrize("fmt", _CUT_FORMATS)
def test_cut_images_are_truncated(fmt: str) -> None:
    """A download cut short is `truncated_image` wherever PIL cannot decode it: cut inside the header
    (PNG, GIF, JPEG and compressed TIFFs were `not_an_image`), in the pixel data (WebP and
    JPEG-compressed TIFF were `corrupt_image`) or just before the end. Where PIL decodes a cut file
    anyway (a PNG without its IEND CRC), the result is a usable image."""
    data = _encode(fmt)
    n = len(data)
    cuts = {16, 30, 60, 120, n // 4, n // 2, 3 * n // 4, n - 20, n - 3, n - 1}
    if fmt.startswith("jpeg"):  # just after each header marker: PIL could not even identify these
        sos = data.index(b"\xff\xda")
        cuts |= {
            i + 2 for i in range(2, sos + 1) if data[i] == 0xFF and data[i + 1] not in (0, 0xFF)
        }
    rejected = set()
    for cut in sorted(cuts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = decode_image(data[:cut])
            full = decode_image(data[:cut], reduced_jpeg_check=False)
        if isinstance(out, Reason):
            assert out.reason == "truncated_image", (fmt, cut, n, out)
            assert isinstance(full, Reason) and full.reason == out.reason, (fmt, cut, full)
            rejected.add(cut)
        else:
            assert isinstance(out, DecodedImage) and (out.width, out.height) == (32, 24), (fmt, cut)
            assert load_pixels(out.data).shape[:2] == (24, 32), (fmt, cut)
    # A cut that loses a quarter of the file or more loses data PIL needs.
    assert {c for c in cuts if c <= 3 * n // 4} <= rejected, (fmt, n, rejected)


def test_jpeg_cut_after_an_embedded_thumbnail_is_truncated() -> None:
    """An EXIF thumbnail in APP1 holds its own SOS and EOI: a JPEG cut between it and the main scan
    is still truncated (the marker walk skips APP1 instead of searching the bytes)."""
    thumb = io.BytesIO()
    _noise_image().resize((8, 6)).save(thumb, "JPEG")
    buf = io.BytesIO()
    _noise_image().save(buf, "JPEG", exif=b"Exif\x00\x00" + thumb.getvalue())
    data = buf.getvalue()
    app1_end = data.index(thumb.getvalue()) + len(thumb.getvalue())
    for cut in (app1_end + 10, data.index(b"\xff\xda", app1_end) + 4):
        out = decode_image(data[:cut])
        assert isinstance(out, Reason) and out.reason == "truncated_image", (cut, out)


@pytest.mark.parametrize("fmt", _CUT_FORMATS)
def test_truncation_check_reads_whole_files_as_whole(fmt: str) -> None:
    """The structure check itself: a whole file, also with junk after its end (common in crawls),
    is not truncated; the same file cut short is."""
    data = _encode(fmt)
    assert _looks_truncated(data) is False, fmt
    assert _looks_truncated(data + b"\x00junk\r\n" * 8) is False, fmt
    for cut in (20, len(data) // 2, len(data) - 8):
        assert _looks_truncated(data[:cut]) is True, (fmt, cut)


def test_whole_but_damaged_image_is_corrupt_not_unknown() -> None:
    """A known signature with a whole but broken structure is an image: `corrupt_image`, neither
    `not_an_image` nor `truncated_image`."""
    garbage = bytes(range(256)) * 4
    png = b"\x89PNG\r\n\x1a\n" + garbage + _chunk(b"IEND", b"")
    webp = b"RIFF" + struct.pack("<I", 4 + len(garbage)) + b"WEBP" + garbage
    for data in (png, webp):
        out = decode_image(data)
        assert isinstance(out, Reason) and out.reason == "corrupt_image", (data[:12], out)


@pytest.mark.parametrize(
    "data",
    [
        b"hello world, not an image",
        b"<html><body>404 Not Found</body></html>" * 20,
        b"RIFF"
        + struct.pack("<I", 100_000)
        + b"WAVEfmt "
        + bytes(200),  # RIFF, but a WAV cut short
        b"\x00" + np.random.default_rng(6).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        b"\x89PNG",  # a signature's first bytes only
        b"GIF89a" + b"\x00" * 5,  # without the whole 13-byte GIF header
    ],
)
def test_data_without_an_image_signature_is_not_an_image(data: bytes) -> None:
    out = decode_image(data)
    assert isinstance(out, Reason) and out.reason == "not_an_image", out
    assert _looks_truncated(data) is None
