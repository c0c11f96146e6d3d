"""Core per-record functions, without Beam."""

from __future__ import annotations

import io

import imagegen
import pytest
from PIL import Image

from mmdata.config import ConfigError, DemoConfig, QualityConfig, from_dict
from mmdata.core.caption import clean_caption
from mmdata.core.image import decode_image
from mmdata.core.keys import slug_key, stable_index
from mmdata.core.quality import check_quality, quality_metrics
from mmdata.core.reasons import Reason
from mmdata.core.tasks import TASKS
from mmdata.core.templates import (
    Template,
    TemplateError,
    check_template,
    fill_template,
    load_templates,
)
from mmdata.io.shards import plan_shards, shard_for


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"a cat  on\na mat", "a cat on a mat"),
        ("\ufeffTom &amp; Jerry\u200b", "Tom & Jerry"),
        ("cafe\u0301", "caf\u00e9"),  # NFC
        (b"caf\xc3\xa9", "caf\u00e9"),
    ],
)
def test_caption_cleaning(raw, expected):
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "caption_missing"),
        (b"caf\xe9", "caption_not_utf8"),
        ("  \t\n", "caption_empty"),
        ("\x00\x01", "caption_empty"),
        ("x" * 1001, "caption_too_long"),
        ("DSC_0001.jpeg", "caption_filename"),
    ],
)
def test_caption_rejects(raw, reason):
    out = clean_caption(raw, max_chars=1000)
    assert isinstance(out, Reason) and out.reason == reason


@pytest.mark.parametrize("name", sorted(imagegen.odd_mode_images()))
def test_odd_modes_are_normalised(name):
    data, mode = imagegen.odd_mode_images()[name]
    out = decode_image(data)
    assert not isinstance(out, Reason), out
    assert out.mode == mode
    img = Image.open(io.BytesIO(out.data))
    assert img.mode == mode and img.size == (out.width, out.height)


def test_exif_orientation_applied():
    out = decode_image(imagegen.exif_rotated_jpeg())
    assert (out.width, out.height) == (40, 80) and out.format == "png"


def test_clean_images_keep_their_bytes():
    data = imagegen.encode(imagegen.photo("coffee"), "JPEG", quality=85)
    out = decode_image(data)
    assert out.data is data and out.format == "jpeg" and not out.reencoded


def test_alpha_is_kept():
    out = decode_image(imagegen.encode(imagegen.shape(0)))
    alpha = Image.open(io.BytesIO(out.data)).getchannel("A")
    assert out.mode == "RGBA" and alpha.getextrema() == (0, 255)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"GIF89a" + b"\x00" * 5, "not_an_image"),
        (imagegen.encode(imagegen.photo("astronaut"), "JPEG")[:1500], "truncated_image"),
        (b"hello world, not an image", "not_an_image"),
        (imagegen.bomb_png(), "decompression_bomb"),
        (imagegen.encode(imagegen.photo("astronaut"), "JPEG")[:600], "truncated_image"),
        (imagegen.encode(imagegen.photo("astronaut"))[:900], "truncated_image"),
    ],
)
def test_bad_images(data, reason):
    out = decode_image(data)
    assert isinstance(out, Reason) and out.reason == reason, out


def test_bomb_refused_before_decoding():
    # 100k x 100k RGB would need 30 GB; refusing must be instant and allocate nothing.
    import tracemalloc

    tracemalloc.start()
    out = decode_image(imagegen.bomb_png())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out.reason == "decompression_bomb" and peak < 5 << 20


def test_file_size_limit():
    out = decode_image(b"\x89PNG" + b"\x00" * 2000, max_file_bytes=1000)
    assert out.reason == "file_too_large"


def test_quality_checks():
    import numpy as np

    cfg = QualityConfig()
    sharp = np.asarray(imagegen.photo("astronaut", 96))
    assert check_quality(quality_metrics(sharp), cfg) is None
    assert (
        check_quality(quality_metrics(np.full((64, 64, 3), 128, np.uint8)), cfg).reason
        == "near_uniform"
    )
    blurred = np.asarray(
        imagegen.photo("astronaut", 96).resize((8, 8)).resize((96, 96), Image.BILINEAR)
    )
    assert (
        check_quality(quality_metrics(blurred), QualityConfig(min_laplacian_var=50)).reason
        == "blurry"
    )
    assert check_quality(quality_metrics(sharp[:10]), cfg).reason == "too_small"
    assert (
        check_quality(quality_metrics(np.tile(sharp, (1, 4, 1))), cfg).reason == "bad_aspect_ratio"
    )


def test_keys():
    assert slug_key("emoji/noto/1f680.png") == "emoji_noto_1f680"
    assert slug_key("a.b/c d.e.jpg") == "a_b_c_d_e"
    assert "." not in slug_key("...png")
    assert stable_index(7, "a", "b") == stable_index(7, "a", "b")
    assert len({stable_index(5, str(i)) for i in range(100)}) == 5


def test_shard_plan_respects_limits_and_is_order_free():
    sizes = [(f"{i:04x}", 100 + i) for i in range(25)]
    plan = plan_shards(list(reversed(sizes)), maxcount=10, maxsize=10**9)
    assert [c for _, _, c in plan] == [10, 10, 5]
    assert [s for _, s, _ in plan] == [0, 10, 20]
    assert (
        shard_for("0000", plan) == 0
        and shard_for("000a", plan) == 1
        and shard_for("0018", plan) == 2
    )
    by_size = plan_shards(sizes, maxcount=100, maxsize=1100)
    assert all(sum(100 + i for i in range(s, s + c)) <= 1100 for _, s, c in by_size)
    assert plan_shards([("a", 10**9)], 10, 100) == [("a", 0, 1)]  # too big alone: own shard
    with pytest.raises(ValueError, match="duplicate sort_key"):
        plan_shards([("a", 1), ("a", 2)], 10, 100)


def test_shard_plan_by_prefix_chunks_is_the_plan_of_the_whole_list():
    """The job plans from key-prefix groups walked in order (no worker holds every key): the same
    shards as planning the whole sorted list, wherever the cuts fall against the group boundaries."""
    import random

    from mmdata.core.keys import stable_hash
    from mmdata.io.shards import PLAN_PREFIX, plan_sorted_chunks

    rng = random.Random(3)
    sizes = [(stable_hash("k", str(i)), rng.randrange(1, 5000)) for i in range(3000)]
    groups: dict[str, list] = {}
    for key, n in sizes:
        groups.setdefault(key[:PLAN_PREFIX], []).append((key, n))
    chunks = [sorted(groups[p]) for p in sorted(groups)]
    assert len(chunks) == 256
    for maxcount, maxsize in ((7, 10**9), (100, 10**9), (10**6, 60_000), (50, 40_000), (1, 1)):
        whole = plan_shards(sizes, maxcount, maxsize)
        assert plan_sorted_chunks(chunks, maxcount, maxsize) == whole
        assert sum(c for _, _, c in whole) == 3000
    assert plan_sorted_chunks([], 10, 100) == []
    with pytest.raises(ValueError, match="duplicate sort_key"):
        plan_sorted_chunks([[("ab", 1)], [("ab", 2)]], 10, 100)


def test_templates_load_and_fill():
    ts = load_templates("txt2img")
    assert len(ts) >= 5 and all(t.task == "txt2img" for t in ts)
    t = Template("x", "txt2img", "Draw {caption}.")
    assert fill_template(t, {"caption": "a {weird} caption"}) == "Draw a {weird} caption."


def test_template_checks():
    edge = TASKS["edge2img"]
    assert check_template("Follow [ref#1] to draw {caption}", edge) == []
    assert check_template("Draw {caption}", edge)  # missing marker
    assert check_template("Follow [ref#1] and [ref#2]: {caption}", edge)  # invented marker
    assert check_template("Follow [ref#1]: {caption} {style}", edge)  # unknown placeholder
    assert check_template("Follow [ref#1]: {caption", edge)  # bad braces
    assert check_template("Follow [ref#1] [ref#1] {caption}", edge)  # repeated marker


def test_template_file_errors(tmp_path):
    (tmp_path / "txt2img.yaml").write_text(
        "task: txt2img\ntemplates:\n  - {id: a, text: 'Draw it', status: accepted}\n"
    )
    with pytest.raises(TemplateError, match="missing placeholder"):
        load_templates("txt2img", tmp_path)
    (tmp_path / "txt2img.yaml").write_text(
        "task: txt2img\ntemplates:\n  - {id: a, text: 'x {caption}'}\n"
    )
    with pytest.raises(TemplateError, match="no accepted"):
        load_templates("txt2img", tmp_path)
    with pytest.raises(TemplateError, match="no template file"):
        load_templates("edge2img", tmp_path)


def test_config_validation():
    cfg = from_dict(DemoConfig, {"quality": {"min_side": "48"}, "tasks": "txt2img"})
    assert cfg.quality.min_side == 48 and cfg.tasks == ["txt2img"]
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(DemoConfig, {"quality": {"min_sid": 3}})
    with pytest.raises(ConfigError, match="must be int"):
        from_dict(DemoConfig, {"seed": "abc"})
    bad = from_dict(DemoConfig, {"shards": {"maxcount": 0}})
    with pytest.raises(ConfigError, match="maxcount"):
        bad.validate()
    with pytest.raises(ConfigError, match="unknown task"):
        from_dict(DemoConfig, {"tasks": ["nope"]}).validate()
    with pytest.raises(ConfigError, match="builds txt2img samples only"):
        from_dict(DemoConfig, {"tasks": ["edge2img"]}).validate()
    with pytest.raises(ConfigError, match="builds txt2img samples only"):
        from_dict(DemoConfig, {"tasks": ""}).validate()
    # YAML `true` is not the number 1; NaN and infinity are not thresholds
    with pytest.raises(ConfigError, match="shards.maxcount must be int"):
        from_dict(DemoConfig, {"shards": {"maxcount": True}})
    for bad_float in ("nan", "inf", float("nan")):
        with pytest.raises(ConfigError, match="quality.max_aspect_ratio must be float"):
            from_dict(DemoConfig, {"quality": {"max_aspect_ratio": bad_float}})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a: [1, 2\n", "is not valid YAML"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        (None, "cannot be read"),  # a folder
        ("missing", "does not exist"),
    ],
)
def test_config_file_errors_are_config_errors(tmp_path, content, message) -> None:  # noqa: ANN001
    from mmdata.config import from_yaml

    path = tmp_path / "cfg.yaml"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        from_yaml(DemoConfig, path)


def test_sample_with_context_matches_schema():
    import json
    from pathlib import Path

    import jsonschema

    from mmdata.core.instructions import make_sample
    from mmdata.records import ContextEntry, ImageTextPair

    schema = json.loads(
        (Path(__file__).resolve().parents[2] / "schemas/instruction_sample.schema.json").read_text()
    )
    png = imagegen.encode(imagegen.shape(2))
    pair = ImageTextPair(
        key="t", image=png, format="png", caption="a red circle", source="s", width=64, height=64
    )
    ctx = [
        ContextEntry(
            marker="[ref#1]", role="edge", text="[ref#1] edge map", image=png, source_keys=["t"]
        )
    ]
    sample = make_sample(
        "edge2img", pair, ctx, {"caption": pair.caption}, load_templates("edge2img"), seed=0
    )
    assert "[ref#1]" in sample.instruction and sample.members().keys() == {"target.png", "ctx1.png"}
    jsonschema.validate(sample.to_json("000000007"), schema)
    with pytest.raises(ValueError, match="context entry 1"):
        make_sample(
            "edge2img",
            pair,
            [ContextEntry("[ref#1]", "mask", "m", png)],
            {"caption": "x"},
            load_templates("edge2img"),
            seed=0,
        )


def _jpeg_variants() -> dict[str, bytes]:
    """Good JPEGs of awkward sizes and kinds, and damaged ones (cut, junk, flipped bytes)."""
    import random

    photo = imagegen.photo("coffee", size=203).convert("RGB")
    good = {
        "odd_size": imagegen.encode(photo.resize((37, 53)), "JPEG"),
        "one_pixel": imagegen.encode(photo.resize((1, 1)), "JPEG"),
        "thin": imagegen.encode(photo.resize((9, 500)), "JPEG"),
        "progressive": imagegen.encode(photo, "JPEG", progressive=True),
        "subsampling_444": imagegen.encode(photo, "JPEG", subsampling=0, quality=95),
        "grey": imagegen.encode(photo.convert("L"), "JPEG"),
        "cmyk": imagegen.encode(photo.convert("CMYK"), "JPEG"),
        "exif_rotated": imagegen.exif_rotated_jpeg(),
    }
    rng = random.Random(7)
    out = dict(good)
    for name in ("odd_size", "progressive", "subsampling_444", "thin"):
        data = good[name]
        for k in range(12):
            b = bytearray(data)
            pos = rng.randrange(len(b) // 3, len(b))
            if k % 3 == 0:
                b = b[:pos]
            elif k % 3 == 1:
                b[pos : pos + 64] = bytes(rng.randrange(256) for _ in range(64))
            else:
                for _ in range(8):
                    b[rng.randrange(len(b) // 3, len(b))] ^= 0xFF
            out[f"{name}_damaged{k}"] = bytes(b)
    return out


def test_reduced_jpeg_check_gives_the_full_decode_result():
    """Upright RGB JPEGs are checked at 1/8 scale (every coefficient is still entropy-decoded): the
    same record or the same reject as a full decode, on good and damaged files."""
    variants = _jpeg_variants()
    reasons = set()
    for name, data in variants.items():
        fast, full = decode_image(data), decode_image(data, reduced_jpeg_check=False)
        if isinstance(full, Reason):
            assert isinstance(fast, Reason) and fast.reason == full.reason, name
            reasons.add(full.reason)
        else:
            assert not isinstance(fast, Reason), (name, fast)
            assert fast == full, name
    assert "truncated_image" in reasons  # the damaged set does exercise the rejects


def test_pil_pixel_limit_left_alone_and_bombs_still_ours():
    # importing mmdata must not switch off PIL's process-wide bomb protection for the user's own code
    import subprocess
    import sys

    code = "import mmdata.core.image, pipelines.ingest; from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    from PIL import Image

    assert out.stdout.strip() == str(Image.MAX_IMAGE_PIXELS) != "None"
    # over PIL's 2 x limit (PIL refuses it while opening) and over ours: our reason, not corrupt_image
    huge = imagegen.bomb_png(20_000, 20_000)
    assert decode_image(huge, max_side=50_000).reason == "decompression_bomb"


def test_configured_pixel_limit_above_pil_s_own(monkeypatch):
    # a job configured for larger images than PIL allows gets them decoded, up to its own limit
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses > 2000 px
    img = io.BytesIO()
    Image.new("RGB", (60, 60), (10, 200, 30)).save(img, format="PNG")  # 3600 px
    assert decode_image(img.getvalue(), max_pixels=5000).width == 60
    assert decode_image(img.getvalue(), max_pixels=3000).reason == "decompression_bomb"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(img.getvalue(), max_pixels=1500).reason == "decompression_bomb"
