"""Build test inputs: real photos (scikit-image), drawn shapes with alpha, and every kind of bad input."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw

PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
]


def photo(name: str, size: int = 96) -> Image.Image:
    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr)
    img.thumbnail((size, size))
    return img.convert("RGB")


def shape(i: int, size: int = 64) -> Image.Image:
    """A drawn RGBA shape on a transparent background (alpha = exact mask)."""
    rng = np.random.default_rng(i)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    color = tuple(int(c) for c in rng.integers(30, 230, 3)) + (255,)
    box = [size // 8, size // 8, size - size // 8, size - size // 8]
    [d.ellipse, d.rectangle, d.polygon][i % 3](
        box
        if i % 3 < 2
        else [
            (size // 2, size // 8),
            (size // 8, size - size // 8),
            (size - size // 8, size - size // 8),
        ],
        fill=color,
        outline=(0, 0, 0, 255),
        width=2,
    )
    d.line([(size // 4, size // 2), (3 * size // 4, size // 2)], fill=(255, 255, 255, 255), width=3)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming a huge size, with a tiny (wrong) body: must be refused unread."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """A 80x40 JPEG whose EXIF orientation (6 = rotate 90 CW) makes it 40x80 when displayed."""
    img = photo("astronaut", 80).resize((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=90)


def odd_mode_images() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected mode after ingest)."""
    base = photo("chelsea", 64)
    rgba = shape(1)
    out: dict[str, tuple[bytes, str]] = {
        "cmyk.jpg": (encode(base.convert("CMYK"), "JPEG"), "RGB"),
        "grey.png": (encode(base.convert("L")), "RGB"),
        "bilevel.png": (encode(base.convert("1")), "RGB"),
        "palette.png": (encode(base.convert("P")), "RGB"),
        "palette_alpha.png": (encode(rgba.convert("P")), "RGBA"),
        "grey_alpha.png": (encode(rgba.convert("LA")), "RGBA"),
        "rgba.png": (encode(rgba), "RGBA"),
        "opaque_rgba.png": (encode(base.convert("RGBA")), "RGB"),
        "sixteen.png": (
            encode(Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)),
            "RGB",
        ),
        "float.tif": (
            encode(Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0), "TIFF"),
            "RGB",
        ),
        "rotated.jpg": (exif_rotated_jpeg(), "RGB"),
        "webp.webp": (encode(base, "WEBP", lossless=True), "RGB"),
        "animated.gif": (
            encode(
                base.convert("P"),
                "GIF",
                save_all=True,
                append_images=[photo("coffee", 64).convert("P")],
            ),
            "RGB",
        ),
    }
    # palette with a transparency index
    p = rgba.convert("RGB").convert("P")
    p.info["transparency"] = 0
    out["palette_trns.png"] = (encode(p, transparency=0), "RGBA")
    return out


def good_folder(root: Path, n_shapes: int = 12) -> list[str]:
    """Real photos + drawn RGBA shapes with .txt or .json captions. Returns the keys."""
    keys = []
    for name in PHOTOS:
        d = root / "photos"
        d.mkdir(parents=True, exist_ok=True)
        photo(name).save(d / f"{name}.png")
        (d / f"{name}.txt").write_text(f"a photo of {name.replace('_', ' ')}")
        keys.append(f"photos_{name}")
    for i in range(n_shapes):
        d = root / "shapes" / f"set{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        shape(i).save(d / f"shape{i:02d}.png")
        (d / f"shape{i:02d}.json").write_text(
            json.dumps({"caption": f"a drawn shape number {i}", "style": f"set{i % 3}"})
        )
        keys.append(f"shapes_set{i % 3}_shape{i:02d}")
    return keys


def bad_folder(root: Path) -> dict[str, str]:
    """Every bad input a folder can hold. Returns {record key: expected reject reason}."""
    root.mkdir(parents=True, exist_ok=True)
    good = encode(photo("coffee", 64))
    jpeg = encode(photo("astronaut", 96), "JPEG", quality=90)
    png = encode(photo("astronaut", 96))
    files = {
        "empty.png": b"",
        "truncated_jpeg.jpg": jpeg[: len(jpeg) // 2],
        "truncated_png.png": png[: len(png) // 2],
        "not_image.jpg": b"<html>this is not an image</html>" * 10,
        "bomb.png": bomb_png(),
        "bad_caption.png": good,
        "empty_caption.png": good,
        "long_caption.png": good,
        "no_sidecar.png": good,
        "filename_caption.png": good,
        "bad_json.png": good,
        "tiny.png": encode(photo("coffee", 8)),
        "uniform.png": encode(Image.new("RGB", (64, 64), (120, 120, 120))),
        "stripe.png": encode(photo("coffee", 240).resize((240, 40))),
        "marker_caption.png": good,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
        stem = name.rsplit(".", 1)[0]
        if name not in ("no_sidecar.png", "bad_json.png"):
            (root / f"{stem}.txt").write_text(f"caption for {stem}")
    (root / "bad_caption.txt").write_bytes(b"caf\xe9 au lait")  # latin-1, not UTF-8
    (root / "empty_caption.txt").write_text("   \n\t ")
    (root / "long_caption.txt").write_text("word " * 2000)
    (root / "filename_caption.txt").write_text("IMG_1234.JPG")
    (root / "marker_caption.txt").write_text("a cat like [ref#1]")
    (root / "bad_json.json").write_text("{not json")
    (root / "orphan.txt").write_text("a caption without an image")
    (root / "notes.xyz").write_text("unknown file type")
    # Two paths that slug to the same key, "dup key/a.png" and "dup_key/a.png": both are kept, the
    # second under the key with its name's hash added (not bad inputs: two images, not one twice).
    for d in ("dup key", "dup_key"):
        (root / d).mkdir(exist_ok=True)
        (root / d / "a.png").write_bytes(encode(photo("rocket", 64)))
        (root / d / "a.txt").write_text(f"a rocket in {d}")
    return {
        "empty": "empty_file",
        "truncated_jpeg": "truncated_image",
        "truncated_png": "truncated_image",
        "not_image": "not_an_image",
        "bomb": "decompression_bomb",
        "bad_caption": "caption_not_utf8",
        "empty_caption": "caption_empty",
        "long_caption": "caption_too_long",
        "no_sidecar": "caption_missing",
        "filename_caption": "caption_filename",
        "bad_json": "bad_sidecar",
        "tiny": "too_small",
        "uniform": "near_uniform",
        "stripe": "bad_aspect_ratio",
        "marker_caption": "caption_has_marker",
        "orphan": "orphan_sidecar",
        "notes": "unsupported_extension",
    }


def img2dataset_tar(
    path: Path, samples: list[tuple[str, bytes, str]], extra: list[tuple[str, bytes]] = ()
) -> None:
    """Write `path` like img2dataset: <key>.jpg/png + <key>.txt + <key>.json; `extra` members appended raw."""
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))

        for key, img, caption in samples:
            add(f"{key}.jpg", img)
            add(f"{key}.txt", caption.encode())
            add(
                f"{key}.json",
                json.dumps(
                    {"key": key, "url": f"https://example.com/{key}.jpg", "caption": caption}
                ).encode(),
            )
        for name, data in extra:
            add(name, data)
