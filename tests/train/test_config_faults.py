"""Config values that used to pass validation and then fail (or mislead) inside training: each is now
one clear error up front (or, for max_steps below a resumed step, a warning)."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from trainfix import tiny_config

from mmdata.train.config import LoraConfig, ModelConfig, TrainConfig, apply_overrides
from mmdata.train.loop import _text_token_limit, train
from mmdata.train.model import Conditioning, InstructUNet
from mmdata.train.text import TextEncoder

TINY = [
    "model.image_size=16",
    "model.base_channels=16",
    "model.channel_mults=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_levels=[1]",
    "model.head_channels=16",
    "model.cond_dim=32",
]


def _cfg(*overrides: str) -> TrainConfig:
    return TrainConfig.from_dict(apply_overrides({}, [*TINY, *overrides]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.head_channels=10", "model.head_channels 10 does not split the attention width"),
        ("model.base_channels=3", "model.base_channels must be even, got 3"),
        ("model.base_channels=1", "model.base_channels must be even, got 1"),
        ("model.in_channels=1", "model.in_channels must be 3"),
        ("model.in_channels=4", "model.in_channels must be 3"),
        ("text.max_tokens=0", r"text.max_tokens must be in \[2, 512\]"),
        ("text.max_tokens=1", r"text.max_tokens must be in \[2, 512\]"),
        ("text.max_tokens=100000", r"text.max_tokens must be in \[2, 512\]"),
        ("data.max_corrupt_fraction=-1", r"data.max_corrupt_fraction must be in \[0, 1\]"),
        ("data.max_corrupt_fraction=5", r"data.max_corrupt_fraction must be in \[0, 1\]"),
        ("data.min_corrupt_errors=-1", "data.min_corrupt_errors must be >= 0"),
    ],
)
def test_values_that_crashed_training_are_refused_up_front(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        _cfg(override)
    assert "\n" not in str(info.value)  # one line after `mmdata train: error:`


def test_edge_values_still_pass() -> None:
    for override in ("text.max_tokens=2", "text.max_tokens=512", "data.max_corrupt_fraction=0"):
        _cfg(override)
    _cfg("data.max_corrupt_fraction=1", "data.min_corrupt_errors=0")
    # 48 channels in heads of 16: 3 heads; 48 // 10 = 4 heads of 12 (exact too)
    _cfg("model.base_channels=24", "model.head_channels=10")


def test_model_check_matches_what_the_model_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() passes exactly the shapes the UNet runs: the rule is the model's, not a guess."""
    torch.manual_seed(0)
    cond = Conditioning(
        text_tokens=torch.randn(1, 3, 8),
        text_mask=torch.ones(1, 3, dtype=torch.bool),
        text_pooled=torch.randn(1, 8),
        ctx_images=torch.randn(1, 1, 3, 8, 8),
        ctx_emb=torch.randn(1, 1, 8),
        ctx_mask=torch.ones(1, 1, dtype=torch.bool),
    )
    for base, head, mults, levels in itertools.product(
        (2, 4, 6, 10), (3, 4, 7, 16), ((1, 2), (1, 3)), ((0,), (1,))
    ):
        mcfg = ModelConfig(
            image_size=8,
            base_channels=base,
            channel_mults=mults,
            num_res_blocks=1,
            attention_levels=levels,
            head_channels=head,
            text_dim=8,
            cond_dim=8,
        )
        try:
            mcfg.validate()
            valid = True
        except ValueError:
            valid = False
        with monkeypatch.context() as m:
            m.setattr(ModelConfig, "validate", lambda self: None)  # build what validate refuses
            try:
                with torch.no_grad():
                    InstructUNet(mcfg)(torch.randn(1, 3, 8, 8), torch.tensor([5]), cond)
                runs = True
            except (RuntimeError, ValueError):
                runs = False
        assert valid == runs, (base, head, mults, levels, valid, runs)


def test_lora_resume_without_a_checkpoint_is_refused(tmp_path: Path, stage1_dir: Path) -> None:
    cfg = tiny_config(tmp_path / "lora", stage1_dir, resume=True, lora=LoraConfig(enabled=True))
    cfg.validate()  # --resume may have a checkpoint to start from: only train() knows
    with pytest.raises(ValueError, match="LoRA fine-tunes a checkpoint: set init_from"):
        train(cfg)
    assert not (tmp_path / "lora").exists()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, stage1_dir: Path, text_encoder: TextEncoder) -> TrainConfig:
    base = tiny_config(tmp_path_factory.mktemp("base"), stage1_dir, max_steps=1)
    base_ckpt = train(base, text_encoder).checkpoint
    lora = tiny_config(
        tmp_path_factory.mktemp("lora"),
        stage1_dir,
        max_steps=1,
        init_from=str(base_ckpt),
        lora=LoraConfig(enabled=True, r=4, alpha=8),
    )
    train(lora, text_encoder)
    return lora


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 8}, "lora.r: checkpoint has 4, this run's config has 8"),
        ({"alpha": 16}, "lora.alpha: checkpoint has 8, this run's config has 16"),
        (
            {"target_modules": ("to_q",)},
            "lora.target_modules: checkpoint has ('to_q', 'to_k', 'to_v', 'to_out'), "
            "this run's config has ('to_q',)",
        ),
        ({"enabled": False}, "lora.enabled: checkpoint has True, this run's config has False"),
    ],
)
def test_lora_resume_with_another_lora_config_is_refused(
    lora_run: TrainConfig, text_encoder: TextEncoder, change: dict, message: str
) -> None:
    lora = {**lora_run.lora.__dict__, **change}
    cfg = tiny_config(
        Path(lora_run.output_dir), Path(lora_run.data.shards[0]), max_steps=2, resume=True
    )
    cfg.lora = LoraConfig(**lora)
    cfg.init_from = lora_run.init_from
    with pytest.raises(ValueError, match="cannot resume") as info:
        train(cfg, text_encoder)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_resume_below_the_checkpoint_step_warns(
    tmp_path: Path, stage1_dir: Path, text_encoder: TextEncoder, caplog
) -> None:
    train(tiny_config(tmp_path, stage1_dir, max_steps=2), text_encoder)
    with caplog.at_level(logging.WARNING, logger="mmdata.train.loop"):
        result = train(tiny_config(tmp_path, stage1_dir, max_steps=1, resume=True), text_encoder)
    assert result.step == 2 and result.losses == []  # behaviour kept: nothing more is trained
    assert "max_steps 1 is below the resumed step 2" in caplog.text


def test_max_tokens_beyond_the_loaded_encoder_is_refused(
    tmp_path: Path, stage1_dir: Path, text_encoder: TextEncoder
) -> None:
    assert _text_token_limit(text_encoder) == 512  # the bundled MiniLM's position embeddings
    # an open_clip tower reports its context length through its tokenizer (77 for ViT-B-32)
    short = SimpleNamespace(dim=384, _tokenizer=SimpleNamespace(context_length=16), _model=None)
    cfg = tiny_config(tmp_path / "run", stage1_dir)  # text.max_tokens=32
    with pytest.raises(ValueError, match="text.max_tokens 32 exceeds the text encoder's limit 16"):
        train(cfg, short)  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()
