"""Tiny but valid ICC v2 CMYK output profiles, written by hand for the colour-conversion tests.

No CMYK profile ships offline (Pillow's littleCMS only creates RGB/grey/Lab/XYZ ones), so this builds
one: a 'prtr' CMYK -> Lab profile whose A2B0 (lut16Type) samples a simple ink model with impure inks
and dot gain, i.e. colours clearly unlike PIL's naive R = 255 (1 - C)(1 - K). Colours are relative to
the paper (paper = L* 100, as ICC v2 A2B0 tables are), so the media white point is D50."""

from __future__ import annotations

import itertools
import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
# Transmittance of a full layer of each ink for (R, G, B) light: real cyan also absorbs green,
# magenta absorbs blue, black is not quite neutral.
INKS = np.array(
    [
        [0.12, 0.55, 0.85],  # cyan
        [0.80, 0.12, 0.45],  # magenta
        [0.95, 0.85, 0.10],  # yellow
        [0.10, 0.10, 0.12],  # black
    ]
)
DOT_GAIN = 0.18  # extra area coverage at 50 % (tone value increase)
# Linear sRGB -> XYZ, Bradford-adapted to D50 (the ICC PCS illuminant).
_SRGB_TO_XYZ_D50 = np.array(
    [
        [0.4360747, 0.3850649, 0.1430804],
        [0.2225045, 0.7168786, 0.0606169],
        [0.0139322, 0.0971045, 0.7141733],
    ]
)


def s15f16(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def ink_model_lab(cmyk: np.ndarray) -> np.ndarray:
    """(..., 4) ink amounts in [0, 1] -> (..., 3) CIE Lab (D50)."""
    cover = cmyk + DOT_GAIN * 4 * cmyk * (1 - cmyk)
    # Each ink layer passes (1 - cover) of the light untouched and `cover` of it through the ink.
    layers = 1 - cover[..., :, None] * (1 - INKS)
    rgb = layers.prod(axis=-2)  # linear, relative to the paper
    xyz = rgb @ _SRGB_TO_XYZ_D50.T / np.array(D50)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


def _tag_desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\x00"
    # textDescriptionType: ASCII part, empty Unicode part, empty ScriptCode part (67 bytes).
    return (
        b"desc"
        + bytes(4)
        + struct.pack(">I", len(ascii_))
        + ascii_
        + struct.pack(">II", 0, 0)
        + struct.pack(">HB", 0, 0)
        + bytes(67)
    )


def _tag_text(text: str) -> bytes:
    return b"text" + bytes(4) + text.encode("ascii") + b"\x00"


def _tag_xyz(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(s15f16(v) for v in xyz)


def _tag_a2b0(grid: int) -> bytes:
    """lut16Type CMYK -> Lab (v2 16-bit Lab encoding), identity 2-entry input and output curves."""
    steps = np.linspace(0.0, 1.0, grid)
    # CLUT order: the first input channel (C) varies slowest.
    points = np.array(list(itertools.product(steps, repeat=4)))
    lab = ink_model_lab(points)
    enc = np.stack(
        [lab[:, 0] * 65280 / 100, (lab[:, 1] + 128) * 256, (lab[:, 2] + 128) * 256], axis=-1
    )
    clut = np.clip(np.rint(enc), 0, 65535).astype(">u2").tobytes()
    identity = struct.pack(">HH", 0, 65535)
    matrix = b"".join(s15f16(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    return (
        b"mft2"
        + bytes(4)
        + struct.pack(">BBBB", 4, 3, grid, 0)
        + matrix
        + struct.pack(">HH", 2, 2)
        + identity * 4
        + clut
        + identity * 3
    )


def cmyk_profile(grid: int = 5, intent: int = 0, description: str = "mmdata test CMYK") -> bytes:
    """An ICC v2.1 output ('prtr') profile, CMYK data, Lab PCS: desc, cprt, wtpt and A2B0 tags."""
    tags = [
        (b"desc", _tag_desc(description)),
        (b"cprt", _tag_text("No copyright, test data")),
        (b"wtpt", _tag_xyz(D50)),
        (b"A2B0", _tag_a2b0(grid)),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = [], b""
    for sig, data in tags:
        table.append(struct.pack(">4sII", sig, offset + len(body), len(data)))
        body += data + bytes(-len(data) % 4)  # tags start on 4-byte boundaries
    size = offset + len(body)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + struct.pack(">I", 0x02100000)
        + b"prtrCMYKLab "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4)  # primary platform
        + bytes(4)  # flags
        + bytes(8)  # manufacturer, model
        + bytes(8)  # attributes
        + struct.pack(">I", intent)
        + b"".join(s15f16(v) for v in D50)
        + b"mmdt"  # creator
        + bytes(44)  # profile ID (v4 only) and reserved
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + body
