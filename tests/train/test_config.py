"""TrainConfig: wrong types and ranges are clear errors naming the field, before any training."""

from __future__ import annotations

import pytest

from mmdata.train.config import TrainConfig, apply_overrides


def _cfg(*overrides: str) -> TrainConfig:
    return TrainConfig.from_dict(apply_overrides({}, list(overrides)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch_size=abc", "batch_size: expected an integer"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("batch_size=true", "batch_size: expected an integer"),
        ("max_steps=2.5", "max_steps: expected an integer"),
        ("lr=fast", "lr: expected a finite number"),
        ("lr=0", "lr and grad_clip must be > 0"),
        ("progress=1", "progress: expected true or false"),
        ("model=5", "model: expected a mapping"),
        ("model.base_channels.x=1", "model.base_channels: expected an integer"),
        ("model.channel_mults=[1,0]", "channel_mults must be positive"),
        ("data.mixture=[1,2]", "data.mixture: expected a mapping"),
        ('data.mixture={"txt2img":"a"}', "data.mixture['txt2img']: expected a finite number"),
        ('data.mixture={"txt2imgg":1}', "unknown task"),
        ("data.num_workers=-1", "num_workers must be >= 0"),
        ("diffusion.num_timesteps=1", "num_timesteps must be >= 2"),
    ],
)
def test_bad_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _cfg(override)


def test_good_values_are_normalised() -> None:
    cfg = _cfg(
        "data.shards=/data/ds",
        "model.channel_mults=[1,2]",
        "model.attention_levels=[1]",
        "lr=1",
        "model.image_size=16",
    )
    assert cfg.data.shards == ["/data/ds"]  # one string is a one-item list, not its characters
    assert cfg.model.channel_mults == (1, 2)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert _cfg("text.model_path=null").text.model_path is None


def test_config_files_that_do_not_parse(tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("batch_size: [1,\n")
    with pytest.raises(ValueError, match="does not parse"):
        TrainConfig.from_file(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_file(tmp_path / "list.yaml")
    (tmp_path / "str.yaml").write_text("batch_size: '4'\n")
    with pytest.raises(ValueError, match="batch_size: expected an integer"):
        TrainConfig.from_file(tmp_path / "str.yaml")
