"""The shard loader: contract decoding, splitting, seeded shuffle, resume, mixture, corrupt samples."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from trainfix import write_dataset

from mmdata.train.config import DataConfig
from mmdata.train.data import (
    CorruptDataError,
    ResumableLoader,
    ShardStream,
    acceptance_probabilities,
    build_loader,
    mixture_acceptance,
    resolve_shards,
)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def one_pass(urls, cfg, rank=0, world=1, batch=4, size=16, **kw) -> list[dict]:
    return list(ShardStream(urls, cfg, batch, size, 0, rank, world, repeat=False, **kw))


def test_decodes_the_shard_contract(stage2_dir: Path) -> None:
    urls, manifest = resolve_shards([str(stage2_dir)])
    assert len(urls) == 4 and manifest["tasks"]["edge2img"] == 12
    cfg = DataConfig(shards=[str(stage2_dir)], num_workers=0, max_context=3)
    batches = one_pass(urls, cfg, shuffle=False)
    assert keys_of(batches) == [f"{i:09d}" for i in range(48)]  # every sample once, in order
    b = batches[0]
    assert b["target"].shape == (4, 3, 16, 16) and b["target"].dtype == torch.uint8
    assert b["context"].shape == (4, 3, 3, 16, 16)
    # tasks cycle txt2img (0 entries), edge2img (1), mask2img (1), retrieval (3)
    assert b["context_mask"].sum(1).tolist() == [0, 1, 1, 3]
    assert b["context_texts"][1] == ["[ref#1] edge map", "", ""]
    assert b["context_roles"][3] == ["neighbour"] * 3
    assert "[ref#1]" in b["text"][1] and b["task"] == [
        "txt2img",
        "edge2img",
        "mask2img",
        "retrieval",
    ]
    assert b["context"][0].max() == 0  # padding stays zero


def test_split_by_node_and_worker_covers_everything_once(stage2_dir: Path) -> None:
    urls, _ = resolve_shards([str(stage2_dir)])
    cfg = DataConfig(num_workers=0)
    for world in (2, 3, 8):  # 8 > 4 shards: falls back to splitting by sample
        parts = [keys_of(one_pass(urls, cfg, rank=r, world=world)) for r in range(world)]
        flat = [k for p in parts for k in p]
        assert sorted(flat) == [f"{i:09d}" for i in range(48)], world
        assert all(parts), world


def test_seeded_shuffle_is_deterministic(stage2_dir: Path) -> None:
    urls, _ = resolve_shards([str(stage2_dir)])
    cfg = DataConfig(num_workers=0, shuffle_buffer=16)

    def order(seed: int) -> list[str]:
        return keys_of(ShardStream(urls, cfg, 4, 16, seed, repeat=False))

    assert order(3) == order(3)
    assert order(3) != order(4)
    assert sorted(order(3)) == sorted(order(4))


def test_pipe_urls(stage1_dir: Path) -> None:
    cfg = DataConfig(num_workers=0)
    urls = [f"pipe:cat {stage1_dir}/{i:05d}.tar" for i in range(4)]
    assert len(keys_of(one_pass(urls, cfg, shuffle=False))) == 48


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_at_the_same_data_position(stage2_dir: Path, workers: int) -> None:
    cfg = DataConfig(shards=[str(stage2_dir)], num_workers=workers, shuffle_buffer=8)
    reference = list(itertools.islice(iter(build_loader(cfg, 4, 16, seed=5)), 20))

    first = build_loader(cfg, 4, 16, seed=5)
    consumed = list(itertools.islice(iter(first), 7))
    state = json.loads(json.dumps(first.state_dict()))  # as stored in state.json
    resumed = build_loader(cfg, 4, 16, seed=5, state=state)
    rest = list(itertools.islice(iter(resumed), 13))
    assert keys_of(consumed + rest) == keys_of(reference)  # crosses epoch boundaries (48 / 4 = 12)
    assert torch.equal(rest[-1]["target"], reference[-1]["target"])
    assert resumed.state_dict()["batches"] == 20


def test_resume_refuses_a_different_worker_count(stage1_dir: Path) -> None:
    cfg = DataConfig(shards=[str(stage1_dir)], num_workers=0)
    loader = build_loader(cfg, 4, 16, seed=0)
    next(iter(loader))
    with pytest.raises(ValueError, match="same data workers"):
        ResumableLoader(
            resolve_shards(cfg.shards)[0],
            DataConfig(num_workers=2),
            4,
            16,
            state=loader.state_dict(),
        )


def test_acceptance_probabilities() -> None:
    p = acceptance_probabilities({"a": 100, "b": 50, "c": 10}, {"a": 0.5, "b": 0.5})
    assert p == {"a": 0.5, "b": 1.0, "c": 0.0}
    with pytest.raises(ValueError, match="selects none"):
        acceptance_probabilities({"a": 1}, {"z": 1.0})


def test_task_mixture_follows_the_override(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "mix", n=80, per_shard=20, tasks=("txt2img", "edge2img"))
    cfg = DataConfig(shards=[str(root)], num_workers=0, mixture={"txt2img": 0.8, "edge2img": 0.2})
    loader = build_loader(cfg, 8, 8, seed=0)
    tasks = [t for b in itertools.islice(iter(loader), 60) for t in b["task"]]
    share = tasks.count("txt2img") / len(tasks)
    assert abs(share - 0.8) < 0.05, share
    assert loader.totals()["mixture_skipped"] > 0
    # default: the manifest's mixture (equal here); use_mixture=False takes everything
    assert mixture_acceptance(DataConfig(), json.loads((root / "manifest.json").read_text())) == {
        "txt2img": 1.0,
        "edge2img": 1.0,
    }
    only = DataConfig(shards=[str(root)], num_workers=0, mixture={"edge2img": 1.0})
    assert {
        t for b in itertools.islice(iter(build_loader(only, 8, 8, 0)), 5) for t in b["task"]
    } == {"edge2img"}


def test_mixture_task_absent_from_the_data_is_a_warning(caplog) -> None:
    """A mixture naming a task the data lacks still trains (on the others) but says so as a
    WARNING naming the task; a zero ratio, or a task that is present, is not warned about."""
    manifest = {"tasks": {"txt2img": 30, "edge2img": 10}}
    cfg = DataConfig(mixture={"txt2img": 0.5, "depth2img": 0.3, "style2img": 0.2, "mask2img": 0})
    with caplog.at_level("INFO", logger="mmdata.train.data"):
        accept = mixture_acceptance(cfg, manifest)
    assert accept == {"txt2img": 1.0, "edge2img": 0.0}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, caplog.text
    msg = warnings[0].getMessage()
    assert "depth2img, style2img" in msg and "no samples" in msg and "mask2img" not in msg
    caplog.clear()
    with caplog.at_level("INFO", logger="mmdata.train.data"):
        mixture_acceptance(DataConfig(mixture={"txt2img": 1.0, "edge2img": 1.0}), manifest)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_corrupt_samples_are_counted_and_skipped(tmp_path: Path) -> None:
    bad = {3: "bad_png", 10: "bad_json", 20: "missing_ctx"}
    root = write_dataset(tmp_path / "bad", n=40, per_shard=10, tasks=("edge2img",), corrupt=bad)
    cfg = DataConfig(shards=[str(root)], num_workers=0, min_corrupt_errors=10)
    with pytest.warns(UserWarning, match="corrupt sample"):
        batches = one_pass(resolve_shards(cfg.shards)[0], cfg, shuffle=False)
    keys = keys_of(batches)
    assert len(keys) == 37 and not {"000000003", "000000010", "000000020"} & set(keys)


def test_too_many_corrupt_samples_raise(tmp_path: Path) -> None:
    bad = dict.fromkeys(range(0, 40, 3), "bad_png")  # 14 of 40
    root = write_dataset(tmp_path / "worse", n=40, per_shard=10, corrupt=bad)
    cfg = DataConfig(
        shards=[str(root)], num_workers=0, min_corrupt_errors=5, max_corrupt_fraction=0.1
    )
    with pytest.warns(UserWarning), pytest.raises(CorruptDataError, match="corrupt samples out of"):
        one_pass(resolve_shards(cfg.shards)[0], cfg, shuffle=False)


def test_truncated_shard_is_survived(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "trunc", n=24, per_shard=12)
    tar = root / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:3000])
    cfg = DataConfig(shards=[str(root)], num_workers=0, min_corrupt_errors=50)
    with pytest.warns(UserWarning):
        keys = keys_of(one_pass(resolve_shards(cfg.shards)[0], cfg, shuffle=False))
    assert keys[:12] == [f"{i:09d}" for i in range(12)] and len(keys) < 24
