"""Regression tests for the model-backend / weight-registry review (findings 1-11).

Each test fails on the code before the fix: explicit paths falling back to the hub, 16-bit and float
images mis-scaled, `weights verify` passing empty folders, raw library tracebacks, folder pins, strip
memory, HF_HUB_OFFLINE, batch crashes on bad elements, Canny parameters and the "how to provide" texts.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mmdata import weights
from mmdata.models.aesthetic import AestheticScoreHandler
from mmdata.models.base import (
    FLOAT_SLACK,
    InputRejected,
    as_uint8_image,
    is_reject,
    resize_rgb,
    resize_short_center_crop,
)
from mmdata.models.canny import CannyEdgeHandler, CannyParams
from mmdata.models.clip import ClipImageEmbedder, centre_square, save_open_clip_dir
from mmdata.models.depth import DPTDepthHandler

from .conftest import infer

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):  # noqa: ANN001, ANN201
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    return save_open_clip_dir(model, TINY_CLIP, tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dpt_dir(tmp_path_factory):  # noqa: ANN001, ANN201
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dpt")
    DPTForDepthEstimation(cfg).eval().save_pretrained(folder)
    return folder


@pytest.fixture
def no_user_weights(monkeypatch):  # noqa: ANN001, ANN201
    for spec in weights.REGISTRY.values():
        if not spec.offline_default:
            monkeypatch.delenv(spec.env_var, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------------------------------------
# 1. An explicit path that does not resolve never falls back to the hub


@pytest.fixture
def hub_recorder(no_user_weights):  # noqa: ANN001, ANN201
    """Hub allowed, and the two hub entry points replaced by recorders (nothing is downloaded)."""
    import open_clip
    from transformers import DPTForDepthEstimation

    calls: list[tuple] = []

    class Fetched(Exception):
        pass

    def fake_clip(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(("open_clip", args, kwargs.get("pretrained")))
        raise Fetched

    def fake_dpt(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(("dpt", args, kwargs))
        raise Fetched

    no_user_weights.setenv("MMDATA_ALLOW_HUB", "1")
    no_user_weights.setattr(open_clip, "create_model_and_transforms", fake_clip)
    no_user_weights.setattr(DPTForDepthEstimation, "from_pretrained", fake_dpt)
    return no_user_weights, calls, Fetched


def test_explicit_path_or_env_var_never_falls_back_to_the_hub(hub_recorder, tmp_path) -> None:  # noqa: ANN001
    mp, calls, fetched = hub_recorder
    typo = str(tmp_path / "dpt-hybrid-midsa")
    with pytest.raises(weights.WeightsMissingError, match="depth-dpt.*dpt-hybrid-midsa"):
        DPTDepthHandler(weights_path=typo).load_model()
    with pytest.raises(weights.WeightsMissingError, match="clip.*missing.safetensors"):
        ClipImageEmbedder(
            weights_path=str(tmp_path / "missing.safetensors"), pretrained="laion2b_s34b_b79k"
        ).load_model()
    mp.setenv("MMDATA_DEPTH_WEIGHTS", typo)
    mp.setenv("MMDATA_CLIP_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(weights.WeightsMissingError, match="MMDATA_DEPTH_WEIGHTS"):
        DPTDepthHandler().load_model()
    with pytest.raises(weights.WeightsMissingError, match="MMDATA_CLIP_WEIGHTS"):
        ClipImageEmbedder(pretrained="laion2b_s34b_b79k").load_model()
    assert calls == []


def test_hub_is_still_used_when_nothing_local_is_configured(hub_recorder) -> None:  # noqa: ANN001
    _, calls, fetched = hub_recorder
    with pytest.raises(fetched):
        DPTDepthHandler().load_model()
    with pytest.raises(fetched):
        ClipImageEmbedder(pretrained="laion2b_s34b_b79k").load_model()
    assert [c[0] for c in calls] == ["dpt", "open_clip"]
    assert calls[0][1] == ("Intel/dpt-hybrid-midas",) and calls[1][2] == "laion2b_s34b_b79k"


# ---------------------------------------------------------------------------------------------------------
# 2. PIL wide modes and big-endian arrays


def _ramp16() -> np.ndarray:
    return np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))


def test_16bit_png_as_pil_matches_its_array() -> None:
    buf = io.BytesIO()
    Image.fromarray(_ramp16()).save(buf, format="PNG")
    png = Image.open(io.BytesIO(buf.getvalue()))
    png.load()
    assert png.mode.startswith("I")
    from_array = as_uint8_image(np.asarray(png))
    from_pil = as_uint8_image(png)
    np.testing.assert_array_equal(from_pil, from_array)
    assert from_pil[0, :, 0].tolist() == (_ramp16()[0] >> 8).tolist()


def test_pil_i16b_i_and_f_modes_and_big_endian_arrays() -> None:
    ramp = _ramp16()
    expected = as_uint8_image(ramp)
    big = ramp.astype(">u2")
    np.testing.assert_array_equal(as_uint8_image(big), expected)
    i16b = Image.frombytes("I;16B", (ramp.shape[1], ramp.shape[0]), big.tobytes())
    np.testing.assert_array_equal(as_uint8_image(i16b), expected)
    mode_i = Image.fromarray(ramp.astype(np.int32))
    assert mode_i.mode == "I"
    np.testing.assert_array_equal(as_uint8_image(mode_i), expected)
    f = ramp.astype(np.float32) / 65535
    mode_f = Image.fromarray(f)
    assert mode_f.mode == "F"
    np.testing.assert_array_equal(as_uint8_image(mode_f), as_uint8_image(f))
    assert as_uint8_image(mode_f).mean() == pytest.approx(127.5, abs=0.6)
    # other byte orders of other dtypes are normalised too
    np.testing.assert_array_equal(as_uint8_image(f.astype(">f4")), as_uint8_image(f))


# ---------------------------------------------------------------------------------------------------------
# 3. One float convention: [0, 1], small overshoot clipped, clearly outside rejected


def test_float_overshoot_is_clipped_not_rescaled() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3)).astype(np.float32)
    base = as_uint8_image(x)
    over = x.copy()
    over[0, 0, 0] = 1.002
    over[1, 1, 1] = -0.01
    got = as_uint8_image(over)
    assert got[0, 0, 0] == 255 and got[1, 1, 1] == 0
    mask = np.ones(x.shape, bool)
    mask[0, 0, 0] = mask[1, 1, 1] = False
    np.testing.assert_array_equal(got[mask], base[mask])


@pytest.mark.parametrize(
    "values", [np.linspace(0, 255, 48), np.linspace(-1, 1, 48), np.full(48, 1.0 + 2 * FLOAT_SLACK)]
)
def test_float_out_of_range_is_a_bad_image_reject(values) -> None:  # noqa: ANN001
    img = values.reshape(4, 4, 3).astype(np.float32)
    with pytest.raises(InputRejected) as err:
        as_uint8_image(img)
    assert err.value.reason == "bad_image"
    assert "[0, 1]" in err.value.detail
    h = CannyEdgeHandler()
    res = infer((h, h.load_model()), [np.repeat(np.repeat(img, 4, 0), 4, 1)])
    assert is_reject(res[0]) and res[0].inference.reason == "bad_image"


# ---------------------------------------------------------------------------------------------------------
# 4. `check` / `weights verify`: existence and layout before "unpinned"


def test_check_reports_wrong_layout_as_missing(
    tmp_path, clip_dir, dpt_dir, no_user_weights
) -> None:  # noqa: ANN001
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    cases = {
        "aesthetic-head": empty,
        "clip": empty,
        "depth-dpt": notes,
        "controlnet-hed": empty,
        "controlnet-lineart": notes,
        "all-minilm-l6-v2": notes,
    }
    for name, path in cases.items():
        st = weights.check(name, path)
        assert st.state == "missing", (name, st)
        assert name in st.message and weights.get_spec(name).env_var in st.message
    assert "has no open_clip_config.json" in weights.check("clip", empty).message
    assert "is a folder" in weights.check("aesthetic-head", empty).message
    # right layouts and intact files: unpinned, and the message says what was checked
    head = tmp_path / "head.pth"
    torch.save(torch.nn.Linear(8, 1).state_dict(), head)
    for name, path in [("clip", clip_dir), ("depth-dpt", dpt_dir), ("aesthetic-head", head)]:
        st = weights.check(name, path)
        assert st.state == "unpinned", (name, st)
        assert "presence, layout and format checked" in st.message
    # a text file where a state dict belongs is found out by the format check
    assert weights.check("aesthetic-head", notes).state == "corrupt"


def test_verify_fails_for_a_user_path_without_usable_weights(
    tmp_path, capsys, no_user_weights
) -> None:  # noqa: ANN001
    from mmdata.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    for name, path in [
        ("aesthetic-head", empty),
        ("clip", empty),
        ("depth-dpt", notes),
        ("controlnet-lineart", notes),
    ]:
        assert main(["weights", "verify", name, "--weights", f"{name}={path}"]) == 1, name
        captured = capsys.readouterr()
        assert f"FAILED for {name}" in captured.err
    no_user_weights.setenv("MMDATA_AESTHETIC_WEIGHTS", str(empty))
    assert main(["weights", "verify", "--json"]) == 1
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["aesthetic-head"]["state"] == "missing"
    assert rows["aesthetic-head"]["origin"] == "env"


# ---------------------------------------------------------------------------------------------------------
# 5. Loader errors become WeightsErrors naming the model, the path and how to provide it


def _truncated_copy(src, dst):  # noqa: ANN001, ANN202
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _assert_clear(err, name: str, path) -> None:  # noqa: ANN001
    msg = str(err.value)
    assert isinstance(err.value, weights.WeightsError)
    assert repr(name) in msg, msg
    assert str(path) in msg, msg
    assert weights.get_spec(name).env_var in msg, msg


def test_aesthetic_unreadable_files_raise_weights_errors(tmp_path, no_user_weights) -> None:  # noqa: ANN001
    head = tmp_path / "head.pth"
    torch.save(torch.nn.Linear(8, 1).state_dict(), head)
    bad = _truncated_copy(head, tmp_path / "truncated.pth")
    with pytest.raises(weights.WeightsError) as err:
        AestheticScoreHandler(weights_path=str(bad)).load_model()
    _assert_clear(err, "aesthetic-head", bad)
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(weights.WeightsError) as err:
        AestheticScoreHandler(weights_path=str(text)).load_model()
    _assert_clear(err, "aesthetic-head", text)
    folder = tmp_path / "folder"
    folder.mkdir()
    no_user_weights.setenv("MMDATA_AESTHETIC_WEIGHTS", str(folder))
    with pytest.raises(weights.WeightsMissingError) as err:
        AestheticScoreHandler().load_model()
    _assert_clear(err, "aesthetic-head", folder)


def test_clip_and_depth_unreadable_weights_raise_weights_errors(
    tmp_path, clip_dir, dpt_dir, no_user_weights
) -> None:  # noqa: ANN001
    import open_clip

    ckpt = tmp_path / "tiny.pt"
    torch.save(open_clip.CLIP(**TINY_CLIP).state_dict(), ckpt)
    bad = _truncated_copy(ckpt, tmp_path / "truncated.pt")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-review-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    with pytest.raises(weights.WeightsError) as err:
        ClipImageEmbedder(model_name="tiny-review-clip", weights_path=str(bad)).load_model()
    _assert_clear(err, "clip", bad)
    no_config = tmp_path / "clip-no-config"
    no_config.mkdir()
    (no_config / "open_clip_model.safetensors").write_bytes(
        (clip_dir / "open_clip_model.safetensors").read_bytes()
    )
    with pytest.raises(weights.WeightsMissingError) as err:
        ClipImageEmbedder(weights_path=str(no_config)).load_model()
    _assert_clear(err, "clip", no_config)
    assert "open_clip_config.json" in str(err.value)

    broken = tmp_path / "dpt-broken"
    broken.mkdir()
    (broken / "config.json").write_text((dpt_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(weights.WeightsError) as err:
        DPTDepthHandler(weights_path=str(broken)).load_model()
    _assert_clear(err, "depth-dpt", broken)
    with pytest.raises(weights.WeightsMissingError) as err:
        DPTDepthHandler(weights_path=str(dpt_dir / "config.json")).load_model()
    _assert_clear(err, "depth-dpt", dpt_dir / "config.json")
    assert "Repo id" not in str(err.value)


def test_minilm_wrong_layouts_fail_before_loading(tmp_path) -> None:  # noqa: ANN001
    from mmdata.models.features import MiniLMTextEmbedder

    model_file = weights.resolve("all-minilm-l6-v2") / "model.safetensors"
    with pytest.raises(weights.WeightsMissingError) as err:
        MiniLMTextEmbedder(weights_path=str(model_file)).load_model()
    _assert_clear(err, "all-minilm-l6-v2", model_file)
    only = tmp_path / "mini"
    only.mkdir()
    (only / "model.safetensors").symlink_to(model_file)
    with pytest.raises(weights.WeightsMissingError, match="config.json") as err:
        MiniLMTextEmbedder(weights_path=str(only)).load_model()
    _assert_clear(err, "all-minilm-l6-v2", only)


def test_annotator_with_another_models_state_dict_raises_a_weights_error(tmp_path) -> None:  # noqa: ANN001
    import warnings

    from mmdata.models.annotators import ControlNetAnnotatorHandler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from controlnet_aux.lineart import Generator
    path = tmp_path / "ControlNetHED.pth"
    torch.save(Generator(3, 1, 3).state_dict(), path)
    with pytest.raises(weights.WeightsError) as err:
        ControlNetAnnotatorHandler(
            annotator="hed", weights_path=str(tmp_path), weights_sha256=None
        ).load_model()
    _assert_clear(err, "controlnet-hed", path)


def test_unpinned_truncated_hed_file_raises_a_weights_error(tmp_path) -> None:  # noqa: ANN001
    from mmdata.models.hed import HEDEdgeHandler

    bad = _truncated_copy(weights.resolve("hed-bsds500"), tmp_path / "hed.weights.h5")
    with pytest.raises(weights.WeightsError) as err:
        HEDEdgeHandler(weights_path=str(bad), weights_sha256=None).load_model()
    _assert_clear(err, "hed-bsds500", bad)


# ---------------------------------------------------------------------------------------------------------
# 6. Pinning a CLIP / DPT folder hashes the weights file inside it


def test_folder_pins_hash_the_weights_member(clip_dir, dpt_dir) -> None:  # noqa: ANN001
    clip_sha = weights.file_sha256(clip_dir / "open_clip_model.safetensors")
    st = weights.check("clip", clip_dir, clip_sha)
    assert st.state == "present" and st.sha256 == clip_sha
    ClipImageEmbedder(weights_path=str(clip_dir), weights_sha256=clip_sha).load_model()
    with pytest.raises(weights.WeightsHashError, match="open_clip_model.safetensors"):
        ClipImageEmbedder(weights_path=str(clip_dir), weights_sha256="0" * 64).load_model()
    dpt_sha = weights.file_sha256(dpt_dir / "model.safetensors")
    assert weights.check("depth-dpt", dpt_dir, dpt_sha).state == "present"
    assert (
        DPTDepthHandler(weights_path=str(dpt_dir), weights_sha256=dpt_sha).load_model().size == 32
    )
    assert weights.check("depth-dpt", dpt_dir, "0" * 64).state == "hash-mismatch"


# ---------------------------------------------------------------------------------------------------------
# 7. Long strips: cost bounded by the output size; ordinary images unchanged


def _old_resize_short_center_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = side / min(h, w)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    out = resize_rgb(image, (nw, nh))
    top, left = (nh - side) // 2, (nw - side) // 2
    return out[top : top + side, left : left + side]


@pytest.fixture
def resize_sizes(monkeypatch):  # noqa: ANN001, ANN201
    """Every PIL resize output size while the test runs."""
    sizes: list[tuple[int, int]] = []
    original = Image.Image.resize

    def recording(self, size, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        sizes.append(tuple(size))
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    return sizes


def test_resize_short_center_crop_of_a_strip_stays_small(resize_sizes) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    for shape in [(8, 40000, 3), (40000, 8, 3)]:
        strip = rng.integers(0, 256, shape, dtype=np.uint8)
        out = resize_short_center_crop(strip, 224)
        assert out.shape == (224, 224, 3)
    assert resize_sizes and max(w * h for w, h in resize_sizes) <= 224 * 240


def test_resize_short_center_crop_matches_resize_then_crop(photos, icons) -> None:  # noqa: ANN001
    """Same geometry as before; the box's float32 coordinates in PIL may move a rare pixel by 1-2."""
    rng = np.random.default_rng(1)
    images = list(photos.values()) + [icons[("face", "shaded")]]
    images += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(8, 600), (500, 16)]]
    for img in images:
        old = _old_resize_short_center_crop(img, 224).astype(int)
        new = resize_short_center_crop(img, 224).astype(int)
        assert new.shape == old.shape
        diff = np.abs(old - new)
        assert diff.max() <= 2 and (diff > 0).mean() < 0.005, (img.shape, diff.max())


def test_clip_strip_preprocessing_is_bounded_and_matches_open_clip(clip_dir, resize_sizes) -> None:  # noqa: ANN001
    h = ClipImageEmbedder(weights_path=str(clip_dir))
    m = h.load_model()
    assert m.shortest_crop is not None and m.shortest_crop[0] == 32
    rng = np.random.default_rng(2)
    strip = rng.integers(0, 256, (12, 900, 3), dtype=np.uint8)
    ref = m.preprocess(Image.fromarray(strip))
    got = h.prepare_for(strip, m)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) < 0.05  # at most a couple of 8-bit levels, rare pixels
    resize_sizes.clear()
    huge = np.zeros((8, 40000, 3), np.uint8)
    vecs = [r.inference for r in infer((h, m), [huge, strip])]
    assert all(v.shape == (16,) for v in vecs)
    assert max(w * hh for w, hh in resize_sizes) <= 64 * 64
    # the centre square itself: same as torchvision's Resize + CenterCrop on the whole strip
    sq = np.asarray(centre_square(strip, 32, Image.BICUBIC)).astype(int)
    full = Image.fromarray(strip).resize((int(32 * 900 / 12), 32), Image.BICUBIC)
    left = int(round((full.width - 32) / 2.0))
    ref_sq = np.asarray(full)[:, left : left + 32].astype(int)
    assert np.abs(sq - ref_sq).max() <= 2


# ---------------------------------------------------------------------------------------------------------
# 8. MiniLM loading does not switch the hub off for the whole process


def test_minilm_load_leaves_hf_hub_offline_alone(monkeypatch) -> None:  # noqa: ANN001
    from mmdata.models.features import MiniLMTextEmbedder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    h = MiniLMTextEmbedder()
    m = h.load_model()
    assert "HF_HUB_OFFLINE" not in os.environ
    assert infer((h, m), ["a cat"])[0].inference.shape == (384,)


# ---------------------------------------------------------------------------------------------------------
# 9. Bad style vectors / embeddings are rejects, not batch crashes


def test_bad_style_vectors_are_rejects(style_transfer, icons) -> None:  # noqa: ANN001
    handler, model = style_transfer
    content = icons[("star", "flat")][:32, :32]
    good = np.zeros(100, np.float32)
    bad = [["a"] * 100, [None] * 100, [[1.0, 2.0], [3.0]], np.array(["x"] * 100)]
    res = infer(style_transfer, [(content, b) for b in bad] + [(content, good)])
    assert [r.inference.reason for r in res[:-1]] == ["bad_style"] * len(bad)
    assert not is_reject(res[-1]) and res[-1].inference.shape == content.shape[:2] + (3,)
    with pytest.raises(InputRejected, match="100 finite floats"):
        handler.prepare((content, ["a"] * 100))


def test_bad_embeddings_are_rejects(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "head.pth"
    torch.save(torch.nn.Linear(8, 1).state_dict(), path)
    h = AestheticScoreHandler(weights_path=str(path))
    m = h.load_model()
    good = np.ones(8, np.float32)
    bad = ["0.1 0.2", {"emb": [0.0] * 8}, None, [[1.0], [2.0, 3.0]], ["a"] * 8]
    res = infer((h, m), [*bad, good])
    assert [r.inference.reason for r in res[:-1]] == ["bad_embedding"] * len(bad)
    assert isinstance(res[-1].inference, float)


# ---------------------------------------------------------------------------------------------------------
# 10. Canny parameters are validated at construction


@pytest.mark.parametrize(
    "kwargs",
    [
        {"blur": 4},
        {"blur": 2},
        {"blur": -1},
        {"blur": 2.5},
        {"blur": True},
        {"low": -1.0, "high": 10.0},
        {"low": 10.0},
        {"high": 10.0},
        {"low": 50.0, "high": 10.0},
        {"low": float("nan"), "high": 10.0},
    ],
)
def test_canny_rejects_bad_parameters(kwargs) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        CannyEdgeHandler(**kwargs)


def test_canny_accepts_valid_parameters() -> None:
    for blur in (0, 1, 3, 5):
        h = CannyEdgeHandler(blur=blur, low=10, high=20)
        img = np.zeros((16, 16, 3), np.uint8)
        img[4:12, 4:12] = 255
        assert infer((h, h.load_model()), [img])[0].inference.shape == (16, 16)
    assert CannyParams(low=0, high=0).low == 0


# ---------------------------------------------------------------------------------------------------------
# 11. "How to provide" texts


def test_how_to_provide_texts(capsys) -> None:  # noqa: ANN001
    from mmdata.cli import main

    aesthetic = weights.get_spec("aesthetic-head")
    assert not aesthetic.source.startswith("hub") and "github.com" in aesthetic.source
    how = aesthetic.how_to_provide()
    assert "sac+logos+ava1-l14-linearMSE.pth" in how and ".safetensors" in how
    assert "hub access" not in how and "weights.pth" not in how
    assert "sac+logos+ava1-l14-linearMSE.pth" in aesthetic.expected_file
    lineart = weights.get_spec("controlnet-lineart").how_to_provide()
    assert "/path/to/a folder" not in lineart
    assert "=/path/to/<folder holding sk_model.pth and sk_model2.pth>" in lineart
    for spec in weights.REGISTRY.values():
        assert "/path/to/a " not in spec.how_to_provide(), spec.name
        assert "weights.pth" not in spec.how_to_provide(), spec.name
    assert main(["weights", "list"]) == 0
    row = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("aesthetic")
    )
    assert " hub " not in row


def test_clip_and_dpt_folders_with_truncated_unpinned_weights_fail_before_loading(
    tmp_path, clip_dir, dpt_dir, monkeypatch, no_user_weights
) -> None:  # noqa: ANN001
    import shutil

    import open_clip
    import transformers

    def no_library_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the library was asked to load a corrupt file")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_library_load)
    monkeypatch.setattr(transformers.DPTForDepthEstimation, "from_pretrained", no_library_load)
    for name, src, member, handler in [
        ("clip", clip_dir, "open_clip_model.safetensors", ClipImageEmbedder),
        ("depth-dpt", dpt_dir, "model.safetensors", DPTDepthHandler),
    ]:
        folder = tmp_path / name
        shutil.copytree(src, folder)
        data = (folder / member).read_bytes()
        (folder / member).write_bytes(data[: len(data) // 2])
        with pytest.raises(weights.WeightsCorruptError) as err:
            handler(weights_path=str(folder)).load_model()
        _assert_clear(err, name, folder / member)
        assert "truncated" in str(err.value)
