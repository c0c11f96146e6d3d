"""The training function: loss goes down, checkpoints round-trip, resume is exact, stage 2 and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainfix import tiny_config

from mmdata.train import checkpoint as ckpt
from mmdata.train.config import DataConfig, LoraConfig, TrainConfig
from mmdata.train.loop import encode_conditioning, train
from mmdata.train.text import TextEncoder


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, stage1_dir: Path, text_encoder: TextEncoder):
    out = tmp_path_factory.mktemp("run1")
    cfg = tiny_config(out, stage1_dir, max_steps=30, checkpoint_every=15)
    return cfg, train(cfg, text_encoder)


def test_loss_goes_down_and_logs(stage1_run) -> None:
    cfg, result = stage1_run
    assert result.step == 30 and len(result.losses) == 30
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    out = Path(cfg.output_dir)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    assert all(r["samples_per_s"] > 0 and r["tasks"] == {"retrieval": 40} for r in log)
    assert log[-1]["corrupt"] == 0 and log[-1]["samples_seen"] == 240
    assert TrainConfig.from_file(out / "config.json") == cfg
    # keep_checkpoints=2: steps 15 and 30 are kept, `latest` points at 30
    assert ckpt.latest_checkpoint(out).name == "step_00000030"
    assert 0 < result.context_share["share_of_total"] < 0.2


def test_save_load_round_trip_gives_identical_outputs(stage1_run, text_encoder, stage1_dir) -> None:
    cfg, result = stage1_run
    path = result.checkpoint
    assert {p.name for p in path.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.pt",
        "state.json",
        "config.json",
    }
    model, loaded_cfg = ckpt.load_model(path, "model")
    again, _ = ckpt.load_model(path, "model")
    ema, _ = ckpt.load_model(path, "ema")
    assert loaded_cfg == cfg
    from mmdata.train.data import build_loader

    batch = next(iter(build_loader(DataConfig(shards=[str(stage1_dir)], num_workers=0), 4, 16, 0)))
    cond = encode_conditioning(batch, text_encoder, "cpu")
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 200, 500, 999])
    with torch.no_grad():
        a, b, e = model(x, t, cond), again(x, t, cond), ema(x, t, cond)
    assert torch.equal(a, b)
    assert not torch.equal(a, e)  # EMA weights are a different (averaged) set
    weights = load_file(str(path / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_resume_continues_the_same_step_optimizer_and_data(
    tmp_path: Path, stage2_dir: Path, text_encoder: TextEncoder
) -> None:
    data = DataConfig(shards=[str(stage2_dir)], num_workers=2, shuffle_buffer=8)
    straight = train(tiny_config(tmp_path / "a", stage2_dir, max_steps=10, data=data), text_encoder)

    half = tiny_config(tmp_path / "b", stage2_dir, max_steps=5, data=data, checkpoint_every=5)
    train(half, text_encoder)
    state = json.loads((ckpt.latest_checkpoint(tmp_path / "b") / "state.json").read_text())
    assert state["step"] == 5 and state["data"][0]["batches"] == 5
    resumed_cfg = tiny_config(tmp_path / "b", stage2_dir, max_steps=10, data=data, resume=True)
    resumed = train(resumed_cfg, text_encoder)
    assert resumed.step == 10 and len(resumed.losses) == 5
    assert resumed.losses == pytest.approx(straight.losses[5:], rel=1e-4)
    a = load_file(str(straight.checkpoint / "model.safetensors"))
    b = load_file(str(resumed.checkpoint / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    sa = json.loads((straight.checkpoint / "state.json").read_text())
    sb = json.loads((resumed.checkpoint / "state.json").read_text())
    assert sa["data"] == sb["data"] and sa["samples_seen"] == sb["samples_seen"] == 80
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").open()]
    assert steps == [5, 10]  # one log appended across the restart

    # a second run into the same folder must say so, not mix its steps into this one
    before = (tmp_path / "b" / "config.json").read_text()
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny_config(tmp_path / "b", stage2_dir, max_steps=12, data=data), text_encoder)
    changed = tiny_config(tmp_path / "b", stage2_dir, max_steps=12, data=data, resume=True)
    changed.model.base_channels *= 2
    labelled = (
        "model config changed: model.base_channels: checkpoint has 16, this run's config has 32"
    )
    with pytest.raises(ValueError, match=labelled):
        train(changed, text_encoder)
    assert (tmp_path / "b" / "config.json").read_text() == before  # the refused run changed nothing


def test_stage2_from_stage1_then_lora(stage1_run, tmp_path: Path, stage2_dir, text_encoder) -> None:
    _, stage1 = stage1_run
    s2 = tiny_config(
        tmp_path / "s2", stage2_dir, stage=2, init_from=str(stage1.checkpoint), max_steps=6
    )
    result = train(s2, text_encoder)
    log = [json.loads(line) for line in (tmp_path / "s2" / "log.jsonl").read_text().splitlines()]
    assert set().union(*(r["tasks"] for r in log)) == {
        "txt2img",
        "edge2img",
        "mask2img",
        "retrieval",
    }
    # it started from stage 1: the first loss is far below a fresh model's (~1.0)
    assert result.losses[0] < 0.8 * 1.0

    lora_cfg = tiny_config(
        tmp_path / "lora",
        stage2_dir,
        stage=2,
        init_from=str(result.checkpoint),
        max_steps=4,
        lora=LoraConfig(enabled=True, r=4, alpha=8),
    )
    lora = train(lora_cfg, text_encoder)
    model, cfg = ckpt.load_model(lora.checkpoint, "model")
    assert cfg.lora.enabled
    base = load_file(str(result.checkpoint / "ema.safetensors"))
    tuned = model.state_dict()
    frozen = "mid_attn.cross_attn.to_q.base_layer.weight"
    assert torch.equal(tuned[frozen], base["mid_attn.cross_attn.to_q.weight"])
    assert any("lora_B" in k and tuned[k].abs().sum() > 0 for k in tuned)


def test_mismatched_text_width_fails_loudly(tmp_path: Path, stage1_dir, text_encoder) -> None:
    cfg = tiny_config(tmp_path, stage1_dir)
    cfg.model.text_dim = 512
    with pytest.raises(ValueError, match="text_dim"):
        train(cfg, text_encoder)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"model": {"base_channel": 3}})
    cfg = TrainConfig.from_dict(
        {"model": {"channel_mults": [1, 2], "attention_levels": [1]}, "data": {"shards": ["x"]}}
    )
    assert cfg.model.channel_mults == (1, 2)


def test_bundled_example_configs_parse() -> None:
    root = Path(__file__).parents[2] / "mmdata" / "train" / "configs"
    for name in ("stage1.yaml", "stage2.yaml", "lora.yaml"):
        data = __import__("yaml").safe_load((root / name).read_text())
        data.setdefault("init_from", "x")  # lora needs a checkpoint to start from
        cfg = TrainConfig.from_dict(data)
        assert cfg.model == TrainConfig().model  # the defaults are the documented base model


# -- review fixes ------------------------------------------------------------------------------------


def test_resume_applies_a_changed_learning_rate(
    tmp_path: Path, stage1_dir: Path, text_encoder: TextEncoder, caplog
) -> None:
    """The optimiser state of the checkpoint carries its lr; the resumed run's config wins, and the
    change is logged as a warning."""
    kw = dict(log_every=1, warmup_steps=0, checkpoint_every=2, weight_decay=0.0)
    train(tiny_config(tmp_path, stage1_dir, max_steps=2, lr=1e-3, **kw), text_encoder)
    resumed = tiny_config(tmp_path, stage1_dir, max_steps=4, lr=1e-5, resume=True, **kw)
    resumed.weight_decay = 0.01
    with caplog.at_level("WARNING", logger="mmdata.train.loop"):
        train(resumed, text_encoder)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"]) for r in log] == [(1, 1e-3), (2, 1e-3), (3, 1e-5), (4, 1e-5)]
    assert "lr 0.001 -> 1e-05, weight_decay 0.0 -> 0.01" in caplog.text
    opt = torch.load(ckpt.latest_checkpoint(tmp_path) / "optimizer.pt", weights_only=True)
    group = opt["optimizer"]["param_groups"][0]
    assert group["lr"] == 1e-5 and group["weight_decay"] == 0.01
    assert opt["scheduler"]["base_lrs"] == [1e-5]


def test_resume_says_what_the_config_changes_once(
    tmp_path: Path, stage1_dir: Path, text_encoder: TextEncoder, caplog, monkeypatch
) -> None:
    """Every process of a multi-GPU run resumes; each logged 'config changes lr' (twice on two
    GPUs). Only the main process says it (and the other messages about the run as a whole)."""
    from accelerate import Accelerator

    kw = dict(log_every=1, warmup_steps=0, checkpoint_every=2)
    train(tiny_config(tmp_path, stage1_dir, max_steps=2, lr=1e-3, **kw), text_encoder)
    resumed = tiny_config(tmp_path, stage1_dir, max_steps=4, lr=1e-5, resume=True, **kw)
    with monkeypatch.context() as m, caplog.at_level("INFO", logger="mmdata.train.loop"):
        m.setattr(Accelerator, "is_main_process", property(lambda self: False))  # another rank
        train(resumed, text_encoder)
    assert "config changes" not in caplog.text and "resuming" not in caplog.text, caplog.text
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000002"  # it writes no checkpoint
    caplog.clear()
    with caplog.at_level("INFO", logger="mmdata.train.loop"):
        train(resumed, text_encoder)  # the main process
    assert caplog.text.count("resume: this run's config changes lr 0.001 -> 1e-05") == 1
    assert caplog.text.count("resuming ") == 1


def test_a_run_failing_before_its_first_checkpoint_leaves_no_run(
    tmp_path: Path, stage1_dir: Path, text_encoder: TextEncoder, monkeypatch
) -> None:
    from mmdata.train import loop
    from mmdata.train.data import NoDataError

    # data that yields nothing: the trainer fails at its first batch, and leaves no folder behind
    out = tmp_path / "run"
    bad = tiny_config(out, stage1_dir, data=DataConfig(shards=[str(stage1_dir)], num_workers=0))
    monkeypatch.setattr(loop, "build_loader", _loader_without_data(loop.build_loader))
    with pytest.raises(NoDataError):
        train(bad, text_encoder)
    assert not out.exists()
    monkeypatch.undo()

    # a failure after some steps: config.json goes, the log stays and says it failed
    out.mkdir()
    calls = {"n": 0}
    real_loss = loop.diffusion_loss

    def failing_loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_loss(*a, **k)

    monkeypatch.setattr(loop, "diffusion_loss", failing_loss)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config(out, stage1_dir, max_steps=4, log_every=1), text_encoder)
    monkeypatch.undo()
    assert not (out / "config.json").exists() and ckpt.latest_checkpoint(out) is None
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 2] and records[-1][
        "failed"
    ] == "RuntimeError: boom"

    # a rerun into that folder is a new run
    result = train(tiny_config(out, stage1_dir, max_steps=2, log_every=1), text_encoder)
    assert result.step == 2 and (out / "config.json").exists()
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").open()] == [1, 2]


def _loader_without_data(build):
    def build_loader(cfg, *a, **k):
        loader = build(cfg, *a, **k)
        loader.dataset.accept = {"edge2img": 1.0}  # the retrieval shards have none
        return loader

    return build_loader


def test_two_process_cpu_run_resumes(tmp_path: Path, stage1_dir: Path) -> None:
    """A two-process CPU run (torchrun, gloo) trains, checkpoints and resumes: accelerate gives such
    a run the device 'cpu:0', which torch.load could not restore the optimizer state onto (the
    resume crashed on every rank). The end of the run is logged once, not once per process."""
    import os
    import subprocess
    import sys

    def run(steps: int, *extra: str) -> subprocess.CompletedProcess:
        cfg = tiny_config(tmp_path / "run", stage1_dir, max_steps=steps, checkpoint_every=2)
        cfg.to_json(tmp_path / f"cfg{steps}.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        cmd += ["-m", "mmdata.cli", "train", "--config", str(tmp_path / f"cfg{steps}.json")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run(2)
    resumed = run(4, "--resume")
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step_00000004"
    assert resumed.stderr.count("resuming ") == 1, resumed.stderr[-3000:]
    assert resumed.stderr.count("finished at step 4") == 1, resumed.stderr[-3000:]
