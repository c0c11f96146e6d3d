"""The trainer's open_clip text tower, through the code users run: a tiny random config saved to a file."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from mmdata.train.config import TextConfig, TrainConfig
from mmdata.train.text import TextEncoder, _open_clip_tokens

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_open_clip_text_tower_from_a_local_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-text-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-text-clip").eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")

    enc = TextEncoder(
        TextConfig(
            backend="open_clip",
            open_clip_model="tiny-text-clip",
            open_clip_pretrained=str(tmp_path / "tiny.pt"),
            max_tokens=16,
        )
    )
    texts = [
        "[ref#1] edge map",
        "a small red circle drawn on a white background with a thin black outline",
        "[ref#1] edge map",
    ]
    out = enc.encode(texts)
    assert enc.dim == 32 and out.tokens.shape == (3, 16, 32) and out.pooled.shape == (3, 32)
    assert out.mask[0].sum() < out.mask[1].sum()  # shorter text, fewer real tokens
    assert torch.equal(out.tokens[0], out.tokens[2]) and not torch.allclose(
        out.pooled[0], out.pooled[1]
    )
    ids = open_clip.get_tokenizer("tiny-text-clip")(texts)[:, :16]
    with torch.no_grad():
        direct = _open_clip_tokens(model, ids) * (ids != 0)[..., None]
    assert torch.allclose(
        out.tokens, direct, atol=1e-6
    )  # the saved weights were loaded, not fresh ones


def test_open_clip_without_weights_is_refused_unless_random_init_is_asked(tmp_path, caplog):
    """As mmdata.models.clip: missing weights are an error, not a silent random tower."""
    from mmdata.weights import WeightsMissingError

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-text-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "cfg")
    with pytest.raises(ValueError, match="text.backend open_clip needs weights"):
        TrainConfig.from_dict({"text": {"backend": "open_clip"}})
    cfg = TextConfig(backend="open_clip", open_clip_model="tiny-text-clip", max_tokens=16)
    with pytest.raises(WeightsMissingError, match="no weights; set text.open_clip_pretrained"):
        _ = TextEncoder(cfg).dim
    missing = TextConfig(**{**cfg.__dict__, "open_clip_pretrained": str(tmp_path / "no.pt")})
    with pytest.raises(WeightsMissingError, match="no.pt' not found"):
        _ = TextEncoder(missing).dim

    asked = TextConfig(**{**cfg.__dict__, "open_clip_random_init": True})
    assert TrainConfig.from_dict({"text": {"backend": "open_clip", "open_clip_random_init": True}})
    with caplog.at_level("WARNING", logger="mmdata.train.text"):
        a = TextEncoder(asked).encode(["a red circle"]).pooled
    assert "RANDOM weights" in caplog.text
    torch.manual_seed(123)  # the random tower is seeded: sampling rebuilds the same one
    assert torch.equal(a, TextEncoder(asked).encode(["a red circle"]).pooled)
