"""Shared fixtures for the model-backend tests: real images and models loaded once per session.

Images: scikit-image photos, and icons drawn here in several *sets* (styles) of the same *subjects*, RGBA
with exact alpha, standing in for an emoji corpus (the bundled corpus is used too where present).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

ICON = 96
SUPER = 4  # draw at 4x and downsample: anti-aliased edges like real icons
SUBJECTS = ["face", "star", "heart", "house", "tree", "moon"]
SETS = ["flat", "outline", "shaded", "pixel", "hatched"]
COLOURS = {
    "face": (250, 200, 40),
    "star": (245, 170, 20),
    "heart": (220, 30, 60),
    "house": (170, 110, 70),
    "tree": (40, 150, 60),
    "moon": (230, 220, 120),
}
CORPUS = Path(__file__).resolve().parents[2] / "mmdata" / "sample_corpus"


def _subject_mask(subject: str, size: int) -> Image.Image:
    s = size / 96.0
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)

    def p(*xy: float) -> list[tuple[float, float]]:
        return [(xy[i] * s, xy[i + 1] * s) for i in range(0, len(xy), 2)]

    if subject == "face":
        d.ellipse(p(10, 10, 86, 86), fill=255)
    elif subject == "star":
        d.polygon(
            p(48, 4, 60, 36, 92, 37, 66, 57, 76, 90, 48, 70, 20, 90, 30, 57, 4, 37, 36, 36),
            fill=255,
        )
    elif subject == "heart":
        d.ellipse(p(8, 14, 52, 58), fill=255)
        d.ellipse(p(44, 14, 88, 58), fill=255)
        d.polygon(p(10, 44, 86, 44, 48, 88), fill=255)
    elif subject == "house":
        d.rectangle(p(20, 44, 76, 88), fill=255)
        d.polygon(p(12, 46, 48, 10, 84, 46), fill=255)
    elif subject == "tree":
        d.polygon(p(48, 4, 84, 66, 12, 66), fill=255)
        d.rectangle(p(40, 64, 56, 92), fill=255)
    elif subject == "moon":
        d.ellipse(p(8, 8, 88, 88), fill=255)
        d.ellipse(p(32, 0, 100, 68), fill=0)
    return im


def _details(subject: str, size: int, colour: tuple[int, int, int]) -> Image.Image:
    """Inner features (eyes, door, window) drawn in a darker tone, as RGBA over transparent."""
    s = size / 96.0
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    dark = tuple(int(c * 0.35) for c in colour) + (255,)
    if subject == "face":
        d.ellipse([34 * s, 34 * s, 42 * s, 46 * s], fill=dark)
        d.ellipse([54 * s, 34 * s, 62 * s, 46 * s], fill=dark)
        d.arc([30 * s, 40 * s, 66 * s, 70 * s], 20, 160, fill=dark, width=int(3 * s))
    elif subject == "house":
        d.rectangle([42 * s, 64 * s, 54 * s, 88 * s], fill=dark)
        d.rectangle([26 * s, 52 * s, 36 * s, 62 * s], fill=dark)
    return im


def draw_icon(subject: str, style: str, size: int = ICON) -> np.ndarray:
    """An RGBA uint8 icon of `subject` in the drawing style `style` (one of SETS)."""
    big = size * SUPER
    mask = _subject_mask(subject, big)
    colour = COLOURS[subject]
    if style == "flat":
        fill = Image.new("RGBA", (big, big), colour + (255,))
        fill.alpha_composite(_details(subject, big, colour))
    elif style == "outline":
        fill = Image.new("RGBA", (big, big), (255, 255, 255, 255))
        inner = mask.filter(ImageFilter.MinFilter(4 * SUPER + 1))
        ring = Image.fromarray(
            ((np.asarray(mask) > 0) & (np.asarray(inner) == 0)).astype(np.uint8) * 255
        )
        fill.paste((20, 20, 20, 255), (0, 0), ring)
        fill.alpha_composite(_details(subject, big, (60, 60, 60)))
    elif style == "shaded":
        yy, xx = np.mgrid[0:big, 0:big] / big
        light = np.clip(1.25 - 1.3 * np.hypot(xx - 0.35, yy - 0.3), 0.25, 1.0)[..., None]
        rgb = np.clip(np.asarray(colour, dtype=np.float32) * light + 60 * (light - 0.5), 0, 255)
        fill = Image.fromarray(
            np.dstack([rgb.astype(np.uint8), np.full((big, big), 255, np.uint8)])
        )
        fill.alpha_composite(_details(subject, big, colour))
    elif style == "pixel":
        small = draw_icon(subject, "flat", 16)
        return np.asarray(Image.fromarray(small).resize((size, size), Image.NEAREST))
    elif style == "hatched":
        yy, xx = np.mgrid[0:big, 0:big]
        stripe = ((xx + yy) // (6 * SUPER)) % 2 == 0
        rgb = np.where(stripe[..., None], np.asarray(colour), np.asarray((40, 40, 90)))
        fill = Image.fromarray(
            np.dstack([rgb.astype(np.uint8), np.full((big, big), 255, np.uint8)])
        )
    else:
        raise ValueError(style)
    fill.putalpha(mask)
    return np.asarray(fill.resize((size, size), Image.LANCZOS))


@pytest.fixture(scope="session")
def icons() -> dict[tuple[str, str], np.ndarray]:
    """{(subject, set): RGBA icon} for every subject in every set."""
    return {(sub, st): draw_icon(sub, st) for sub in SUBJECTS for st in SETS}


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """A few scikit-image photos, downscaled to keep the tests fast."""
    from skimage import data

    out = {}
    for name in ["astronaut", "chelsea", "coffee", "rocket"]:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        scale = 160 / max(h, w)
        out[name] = np.asarray(
            Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.BICUBIC)
        )
    return out


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    # Deterministic, and polite on the shared 2-core machine.
    torch.set_num_threads(1)


def load(handler):  # noqa: ANN001, ANN201
    return handler.load_model()


@pytest.fixture(scope="session")
def hed():
    from mmdata.models.hed import HEDEdgeHandler

    h = HEDEdgeHandler()
    return h, h.load_model()


@pytest.fixture(scope="session")
def u2net():
    from mmdata.models.u2net import U2NetMaskHandler

    h = U2NetMaskHandler(use_alpha=False, threads=1)
    return h, h.load_model()


@pytest.fixture(scope="session")
def effnet():
    from mmdata.models.features import EfficientNetImageEmbedder

    h = EfficientNetImageEmbedder()
    return h, h.load_model()


@pytest.fixture(scope="session")
def minilm():
    from mmdata.models.features import MiniLMTextEmbedder

    h = MiniLMTextEmbedder()
    return h, h.load_model()


@pytest.fixture(scope="session")
def style_vec():
    from mmdata.models.style import StyleVectorHandler

    h = StyleVectorHandler(threads=1)
    return h, h.load_model()


@pytest.fixture(scope="session")
def style_transfer():
    from mmdata.models.style import StyleTransferHandler

    h = StyleTransferHandler(threads=1)
    return h, h.load_model()


def infer(handler_and_model, elements):  # noqa: ANN001, ANN201
    """Run a handler's run_inference on `elements`; returns the PredictionResults as a list."""
    handler, model = handler_and_model
    return list(handler.run_inference(list(elements), model))


def outputs(handler_and_model, elements):  # noqa: ANN001, ANN201
    return [r.inference for r in infer(handler_and_model, elements)]


def corpus_rows(group: str = "emoji") -> list[dict]:
    """Rows of the bundled corpus index for `group` (the corpus is committed with the repo)."""
    index = CORPUS / "index.jsonl"
    rows = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["group"] == group]


def corpus_sample(
    n_subjects: int, subjects: list[str] | None = None
) -> list[tuple[np.ndarray, dict]]:
    """(RGBA image, row) for the first `n_subjects` subjects (sorted) in every emoji style, or for the
    given subjects."""
    rows = corpus_rows()
    chosen = subjects or sorted({r["subject"] for r in rows})[:n_subjects]
    out = []
    for r in sorted(rows, key=lambda r: (r["style"], r["subject"])):
        if r["subject"] in chosen:
            out.append((np.asarray(Image.open(CORPUS / r["path"])), r))
    return out
