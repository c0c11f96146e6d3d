"""Damaged input files of the trainer: a manifest.json with wrongly typed fields, a truncated or
broken checkpoint file, an empty dataset root among others; each is a one-line error (exit 2) that
names the file, or (an empty root) a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from trainfix import tiny_config, write_dataset

from mmdata.cli import main
from mmdata.train import checkpoint as ckpt
from mmdata.train import data
from mmdata.train.config import DataConfig
from mmdata.train.data import build_loader, resolve_shards


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmdata {command}: error: "), err
    return err[0]


def _never_train(monkeypatch) -> None:
    from mmdata.train import loop

    def never(*a, **k):
        raise AssertionError("the trainer started")

    monkeypatch.setattr(loop, "train", never)


def _edit_manifest(root: Path, edit) -> None:
    m = json.loads((root / "manifest.json").read_text())
    edit(m)
    (root / "manifest.json").write_text(json.dumps(m))


# -- 1. wrongly typed manifest fields ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("samples_str", lambda m: m["shards"][0].update(samples="4"), "shards[0].samples is"),
        ("samples_null", lambda m: m["shards"][0].update(samples=None), "shards[0].samples is"),
        ("samples_neg", lambda m: m["shards"][1].update(samples=-1), "shards[1].samples is"),
        ("bytes_str", lambda m: m["shards"][0].update(bytes="5"), "shards[0].bytes is"),
        ("tasks_str", lambda m: m.update(tasks={"retrieval": "8"}), 'tasks["retrieval"] is'),
        ("tasks_list", lambda m: m.update(tasks=["retrieval"]), "tasks is"),
        ("mixture_list", lambda m: m.update(mixture=["retrieval"]), "mixture is"),
        ("mixture_str", lambda m: m.update(mixture={"retrieval": "1"}), 'mixture["retrieval"]'),
        ("mixture_neg", lambda m: m.update(mixture={"retrieval": -1.0}), 'mixture["retrieval"]'),
        ("mixture_nan", lambda m: m.update(mixture={"retrieval": float("nan")}), "mixture["),
    ],
)
def test_wrongly_typed_manifest_fields_are_one_line_errors(
    tmp_path: Path, capsys, monkeypatch, kind: str, edit, message: str
) -> None:
    _never_train(monkeypatch)
    root = write_dataset(tmp_path / kind, n=8, per_shard=4)
    _edit_manifest(root, edit)
    with pytest.raises(ValueError, match="manifest.json"):
        resolve_shards([str(root)])
    rc = main(["train", "--shards", str(root), "--output", str(tmp_path / "run")])
    assert rc == 2
    err = _one_line_error(capsys, "train")
    assert f"{root}/manifest.json: {message}" in err
    assert not (tmp_path / "run").exists()


def test_a_manifest_written_by_a_job_passes_the_type_checks(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "ok", n=8, per_shard=4, tasks=("txt2img", "retrieval"))
    _edit_manifest(root, lambda m: m.update(mixture={"txt2img": 1, "retrieval": 0.5}))
    urls, manifest = resolve_shards([str(root)])
    assert len(urls) == 2 and manifest["tasks"] == {"txt2img": 4, "retrieval": 4}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{x", "is not valid JSON (Expecting property name"),
        ("[1]", "is not an mmdata manifest"),
        ('{"tasks": {"retrieval": "8"}}', 'tasks["retrieval"] is "8"'),
        ('{"mixture": ["retrieval"]}', "mixture is"),
    ],
)
def test_a_bad_data_manifest_is_named(tmp_path: Path, text: str, message: str) -> None:
    root = write_dataset(tmp_path / "ds", n=8, per_shard=4)
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    cfg = DataConfig(shards=[str(root / "00000.tar")], manifest=str(bad), num_workers=0)
    with pytest.raises(ValueError, match="manifest") as e:
        build_loader(cfg, 4, 16, 0)
    assert f"data.manifest {bad}" in str(e.value) and message in str(e.value)
    cfg.manifest = str(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        build_loader(cfg, 4, 16, 0)


# -- 2. damaged checkpoints --------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """One small checkpoint written as the trainer writes it (no training)."""
    cfg = tiny_config(tmp_path / "run", tmp_path / "ds")
    model = ckpt.build_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    path = ckpt.checkpoint_dir(cfg.output_dir, 4)
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True)
    opt = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    state = {"step": 4, "samples_seen": 32, "data": [{}]}
    ckpt.write_checkpoint(tmp, model, model.state_dict(), opt, cfg, state)
    ckpt.publish_checkpoint(tmp, path, keep=2)
    return path


def _truncate(file: Path, size: int = 50) -> None:
    file.write_bytes(file.read_bytes()[:size])


def test_an_intact_checkpoint_reads(checkpoint: Path) -> None:
    model, cfg = ckpt.load_model(checkpoint)
    assert cfg.model.base_channels == 16 and not model.training
    assert ckpt.read_state(checkpoint)["step"] == 4
    assert set(ckpt.read_optimizer_state(checkpoint)) == {"optimizer", "scheduler"}


@pytest.mark.parametrize("which", ["ema", "model"])
def test_truncated_weights_name_the_file(checkpoint: Path, which: str) -> None:
    file = checkpoint / f"{which}.safetensors"
    _truncate(file)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_model(checkpoint, which)
    assert isinstance(e.value, ValueError)  # the command line: one line, exit 2
    assert f"checkpoint file {file} is damaged or truncated" in str(e.value)
    assert "use an earlier checkpoint" in str(e.value) and "\n" not in str(e.value)


def test_truncated_optimizer_state_names_the_file(checkpoint: Path) -> None:
    file = checkpoint / "optimizer.pt"
    _truncate(file, 100)
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint file {file} is damaged"):
        ckpt.read_optimizer_state(checkpoint)
    torch.save({"something": 1}, file)
    with pytest.raises(ckpt.CheckpointError, match="no optimizer and scheduler state"):
        ckpt.read_optimizer_state(checkpoint)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"step": ', "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"step": "4", "samples_seen": 0}', "step is '4'"),
        ('{"step": 4}', "samples_seen is None"),
        ('{"step": 4, "samples_seen": 0, "data": 3}', "data is not a list"),
    ],
)
def test_a_broken_state_json_names_the_file(checkpoint: Path, text: str, message: str) -> None:
    file = checkpoint / "state.json"
    file.write_text(text)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read_state(checkpoint)
    assert f"checkpoint file {file} is damaged" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"model": ', "not valid JSON"), ('{"model": 3}', "model"), ("null", "not a JSON object")],
)
def test_a_broken_config_json_names_the_file(checkpoint: Path, text: str, message: str) -> None:
    file = checkpoint / "config.json"
    file.write_text(text)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_model(checkpoint)
    assert f"checkpoint file {file} is damaged" in str(e.value) and message in str(e.value)


def test_weights_that_do_not_fit_the_config_name_the_file(checkpoint: Path) -> None:
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["model"]["base_channels"] = 32
    (checkpoint / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ckpt.CheckpointError, match="its weights do not fit config.json"):
        ckpt.load_model(checkpoint)


def test_sample_with_a_truncated_checkpoint_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    _truncate(checkpoint / "ema.safetensors")
    instruction = tmp_path / "i.json"
    instruction.write_text(json.dumps({"instruction": "a red circle"}))
    rc = main(
        [
            "sample",
            "--checkpoint",
            str(checkpoint.parent.parent),
            "--instruction",
            str(instruction),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 2
    err = _one_line_error(capsys, "sample")
    assert f"{checkpoint / 'ema.safetensors'} is damaged or truncated" in err


# -- 3. an empty dataset root among others ---------------------------------------------------------


def _empty_root(root: Path) -> Path:
    """What a job that kept no sample writes: no shards, no task counts."""
    root.mkdir(parents=True)
    manifest = {"format": None, "shards": [], "tasks": {}, "mixture": {}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_an_empty_root_is_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    data._WARNED.clear()
    empty = _empty_root(tmp_path / "zero")
    full = write_dataset(tmp_path / "full", n=8, per_shard=4)
    with caplog.at_level(logging.WARNING, logger="mmdata.train.data"):
        urls, manifest = resolve_shards([str(empty), str(full)])
        resolve_shards([str(empty), str(full)])  # the loader resolves them again: no second warning
    assert len(urls) == 2 and manifest["tasks"] == {"retrieval": 8}
    warned = [r.getMessage() for r in caplog.records if "hold no samples" in r.getMessage()]
    assert len(warned) == 1 and str(empty) in warned[0]
    # only empty roots: nothing to train on, still an error
    with pytest.raises(ValueError, match="no shards found"):
        resolve_shards([str(empty), str(_empty_root(tmp_path / "zero2"))])


# -- 4. the size warning once per run ------------------------------------------------------------------


def test_the_shard_size_warning_is_given_once(tmp_path: Path, caplog) -> None:
    data._WARNED.clear()
    root = write_dataset(tmp_path / "ds", n=8, per_shard=4)
    _edit_manifest(root, lambda m: m["shards"][0].update(bytes=5))
    with caplog.at_level(logging.WARNING, logger="mmdata.train.data"):
        resolve_shards([str(root)])
        resolve_shards([str(root)])
    warned = [r for r in caplog.records if "differ in size" in r.getMessage()]
    assert len(warned) == 1
