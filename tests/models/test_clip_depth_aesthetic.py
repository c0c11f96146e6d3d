"""Backends without offline weights, through the code users run: a tiny random-initialised open_clip
config and a tiny DPT are saved and loaded back from a path; aesthetic heads in both LAION layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdata import weights
from mmdata.models.aesthetic import AestheticScoreHandler
from mmdata.models.base import is_reject
from mmdata.models.clip import ClipImageEmbedder, ClipTextEmbedder, save_open_clip_dir
from mmdata.models.depth import DPTDepthHandler

from .conftest import infer, outputs

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):  # noqa: ANN001, ANN201
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    folder = save_open_clip_dir(model, TINY_CLIP, tmp_path_factory.mktemp("clip"))
    return model, folder


def test_clip_saved_and_loaded_from_a_folder_matches_the_model(tiny_clip, photos, icons) -> None:  # noqa: ANN001
    import open_clip
    from PIL import Image

    model, folder = tiny_clip
    h = ClipImageEmbedder(weights_path=str(folder))
    m = h.load_model()
    imgs = [photos["chelsea"], icons[("star", "flat")]]
    vecs = outputs((h, m), imgs)
    assert all(v.shape == (32,) for v in vecs)
    pre = open_clip.image_transform(32, is_train=False)
    rgb = np.asarray(photos["chelsea"])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(
            model.encode_image(pre(Image.fromarray(rgb))[None]), dim=-1
        )
    np.testing.assert_allclose(vecs[0], ref[0].numpy(), atol=1e-5)
    for img, v in zip(imgs, vecs, strict=True):  # batch of 1 == batch of N
        np.testing.assert_allclose(outputs((h, m), [img])[0], v, atol=1e-5)

    t = ClipTextEmbedder(weights_path=str(folder))
    tm = t.load_model()
    tv = outputs((t, tm), ["a cat", "a star", ""])
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")(["a cat"])
    with torch.no_grad():
        ref_t = torch.nn.functional.normalize(model.encode_text(tok), dim=-1)[0].numpy()
    np.testing.assert_allclose(tv[0], ref_t, atol=1e-5)
    assert tv[2].reason == "empty_text"


def test_clip_checkpoint_file_with_model_name(tiny_clip, tmp_path, monkeypatch, photos) -> None:  # noqa: ANN001
    import open_clip

    model, folder = tiny_clip
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-test-clip.json").write_text(__import__("json").dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir)
    monkeypatch.setenv("MMDATA_CLIP_WEIGHTS", str(ckpt))  # the env var is a path source too
    h = ClipImageEmbedder(model_name="tiny-test-clip")
    from_file = outputs((h, h.load_model()), [photos["rocket"]])[0]
    h2 = ClipImageEmbedder(weights_path=str(folder))
    np.testing.assert_allclose(
        from_file, outputs((h2, h2.load_model()), [photos["rocket"]])[0], atol=1e-6
    )
    # a pinned hash the file does not have fails before anything runs
    with pytest.raises(weights.WeightsHashError):
        ClipImageEmbedder(model_name="tiny-test-clip", weights_sha256="0" * 64).load_model()


def test_clip_without_weights_or_hub_fails_clearly(monkeypatch) -> None:
    monkeypatch.delenv("MMDATA_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("MMDATA_ALLOW_HUB", raising=False)
    with pytest.raises(weights.WeightsMissingError) as err:
        ClipImageEmbedder(pretrained="laion2b_s34b_b79k").load_model()
    msg = str(err.value)
    assert "MMDATA_CLIP_WEIGHTS" in msg and "MMDATA_ALLOW_HUB" in msg and "laion2b_s34b_b79k" in msg


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):  # noqa: ANN001, ANN201
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    torch.manual_seed(0)
    model = DPTForDepthEstimation(cfg).eval()
    folder = tmp_path_factory.mktemp("dpt")
    model.save_pretrained(folder)
    return model, folder


def test_depth_tiny_dpt_from_folder(tiny_dpt, photos, icons) -> None:  # noqa: ANN001
    model, folder = tiny_dpt
    h = DPTDepthHandler(weights_path=str(folder))
    m = h.load_model()
    assert m.size == 64
    imgs = [photos["astronaut"], icons[("house", "shaded")]]
    maps = outputs((h, m), imgs)
    for img, d in zip(imgs, maps, strict=True):
        assert d.shape == img.shape[:2] and d.dtype == np.float32
        assert d.min() == 0.0 and d.max() == 1.0
        np.testing.assert_allclose(outputs((h, m), [img])[0], d, atol=1e-5)
    # the same numbers as calling the model directly on the same tensor
    x = torch.from_numpy(h.prepare_for(imgs[0], m)[0])[None]
    with torch.no_grad():
        raw = model(pixel_values=x).predicted_depth
    assert raw.shape[-2:] == (64, 64)
    ref = torch.nn.functional.interpolate(raw[:, None], size=imgs[0].shape[:2], mode="bicubic")[
        0, 0
    ]
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(maps[0], ref.numpy(), atol=1e-5)


def test_depth_without_weights_fails_clearly(monkeypatch) -> None:
    monkeypatch.delenv("MMDATA_DEPTH_WEIGHTS", raising=False)
    monkeypatch.delenv("MMDATA_ALLOW_HUB", raising=False)
    assert weights.check("depth-dpt").state == "missing"
    with pytest.raises(weights.WeightsMissingError, match="MMDATA_DEPTH_WEIGHTS"):
        DPTDepthHandler().load_model()


@pytest.mark.parametrize("layout", ["linear", "mlp"])
def test_aesthetic_head_layouts(layout, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    dim = 32
    if layout == "linear":
        ref = torch.nn.Linear(dim, 1)
        state = ref.state_dict()
        path = tmp_path / "head.pth"
        torch.save(state, path)
    else:
        ref = torch.nn.Sequential(
            torch.nn.Linear(dim, 64),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(64, 16),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(16, 1),
        )
        from safetensors.torch import save_file

        state = {f"layers.{k}": v for k, v in ref.state_dict().items()}
        path = tmp_path / "head.safetensors"
        save_file(state, str(path))
    h = AestheticScoreHandler(weights_path=str(path))
    m = h.load_model()
    emb = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
    scores = outputs((h, m), list(emb))
    unit = torch.nn.functional.normalize(torch.from_numpy(emb), dim=-1)
    with torch.no_grad():
        expected = ref.eval()(unit)[:, 0].numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    res = infer((h, m), [np.zeros(5), emb[0]])
    assert is_reject(res[0]) and res[0].inference.reason == "bad_embedding"
    assert res[1].inference == pytest.approx(scores[0], abs=1e-5)


def test_aesthetic_without_weights_fails_clearly(monkeypatch) -> None:
    monkeypatch.delenv("MMDATA_AESTHETIC_WEIGHTS", raising=False)
    with pytest.raises(
        weights.WeightsMissingError, match="aesthetic-head.*MMDATA_AESTHETIC_WEIGHTS"
    ):
        AestheticScoreHandler().load_model()
