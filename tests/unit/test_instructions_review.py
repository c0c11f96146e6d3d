"""Text-to-image samples from templates (mmdata/core/instructions.py)."""

from __future__ import annotations

import json
from pathlib import Path

import imagegen
import jsonschema
import pytest

from mmdata.core.instructions import fill_instruction, txt2img_sample
from mmdata.core.reasons import Reason
from mmdata.core.templates import Template, load_templates
from mmdata.records import ImageTextPair

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas/instruction_sample.schema.json").read_text()
)


def _pair(caption: str, metadata: dict | None = None) -> ImageTextPair:
    return ImageTextPair(
        key="k",
        image=imagegen.encode(imagegen.shape(1)),
        format="png",
        caption=caption,
        source="/data/k.png",
        width=64,
        height=64,
        metadata=metadata or {},
    )


def test_sample_keeps_the_pairs_licence_and_quality_metadata() -> None:
    """The pair's sidecar metadata (licence, author: attribution a CC-BY image needs) and its quality
    metrics were dropped from the instruction sample, the only record a dataset keeps per sample."""
    meta = {
        "license": "CC-BY-4.0",
        "author": "Twitter",
        "source": "npm:@iconify-json/twemoji@1.2.5",
        "quality": {"laplacian_var": 812.5, "grey_std": 60.1},
    }
    sample = txt2img_sample(_pair("a rocket emoji", meta), load_templates("txt2img"), seed=0)
    doc = sample.to_json("000000000")
    jsonschema.validate(doc, SCHEMA)
    assert doc["metadata"]["source"] == "/data/k.png"
    assert doc["metadata"]["target_metadata"] == meta


def test_sample_without_pair_metadata_has_no_empty_entry() -> None:
    sample = txt2img_sample(_pair("a rocket emoji"), load_templates("txt2img"), seed=0)
    assert sample.metadata == {"source": "/data/k.png"}


DRAW = Template(id="t", task="txt2img", text="Draw {caption}.")


@pytest.mark.parametrize(
    "caption, instruction",
    [
        ("a red apple", "Draw a red apple."),
        ("A red apple.", "Draw A red apple."),  # was "Draw A red apple.."
        ("what a day!", "Draw what a day!"),  # was "Draw what a day!."
        ("is it a cat?", "Draw is it a cat?"),
        ("and so on\u2026", "Draw and so on\u2026"),
        ("the number 3.5", "Draw the number 3.5."),
    ],
)
def test_no_doubled_sentence_stop(caption: str, instruction: str) -> None:
    assert fill_instruction(DRAW, {"caption": caption}) == instruction


def test_every_shipped_template_gives_one_stop_for_a_sentence_caption() -> None:
    for template in load_templates("txt2img"):
        text = fill_instruction(template, {"caption": "A cat sits on a mat."})
        assert ".." not in text and "A cat sits on a mat." in text, (template.id, text)


def test_braces_in_captions_are_text() -> None:
    text = fill_instruction(DRAW, {"caption": "a sign saying {caption}."})
    assert text == "Draw a sign saying {caption}."


def test_caption_with_a_marker_is_refused() -> None:
    out = txt2img_sample(_pair("a photo of [ref#1]"), load_templates("txt2img"), seed=0)
    assert isinstance(out, Reason) and out.reason == "caption_has_marker"
