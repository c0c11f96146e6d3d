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
    NoDataError,
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


# -- review fixes ------------------------------------------------------------------------------------


def test_several_dataset_roots_combine_their_manifests(tmp_path: Path) -> None:
    """Shards of every root, task counts summed; the loader then samples the tasks of all roots."""
    a = write_dataset(tmp_path / "a", n=24, per_shard=12, tasks=("txt2img",))
    b = write_dataset(tmp_path / "b", n=12, per_shard=6, tasks=("edge2img", "mask2img"), seed=1)
    urls, manifest = resolve_shards([str(a), str(b)])
    assert len(urls) == 4 and {u.rsplit("/", 2)[-2] for u in urls} == {"a", "b"}
    assert manifest["tasks"] == {"txt2img": 24, "edge2img": 6, "mask2img": 6}
    # each root's mixture is its own proportions: so is the combined one
    assert manifest["mixture"] == {"txt2img": 0.666667, "edge2img": 0.166667, "mask2img": 0.166667}
    cfg = DataConfig(shards=[str(a), str(b)], num_workers=0, shuffle_buffer=4)
    tasks = {
        t for batch in itertools.islice(iter(build_loader(cfg, 4, 8, 0)), 12) for t in batch["task"]
    }
    assert tasks == {"txt2img", "edge2img", "mask2img"}


def test_dataset_roots_with_different_mixtures_need_one(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", n=8, per_shard=8, tasks=("txt2img", "edge2img"))
    b = write_dataset(
        tmp_path / "b",
        n=8,
        per_shard=8,
        tasks=("txt2img", "edge2img"),
        mixture={"txt2img": 0.9, "edge2img": 0.1},
    )
    _, manifest = resolve_shards([str(a), str(b)])
    with pytest.raises(ValueError, match="different task mixtures.*--mixture"):
        mixture_acceptance(DataConfig(), manifest)
    accept = mixture_acceptance(DataConfig(mixture={"txt2img": 1.0}), manifest)
    assert accept == {"txt2img": 1.0, "edge2img": 0.0}
    assert mixture_acceptance(DataConfig(use_mixture=False), manifest) is None
    # the same explicit mixture in both roots is that mixture
    c = write_dataset(
        tmp_path / "c",
        n=8,
        per_shard=8,
        tasks=("txt2img", "edge2img"),
        mixture={"txt2img": 0.9, "edge2img": 0.1},
    )
    assert resolve_shards([str(b), str(c)])[1]["mixture"] == {"edge2img": 0.1, "txt2img": 0.9}
    m = json.loads((c / "manifest.json").read_text())
    (c / "manifest.json").write_text(json.dumps({**m, "format": "other-v9"}))
    m = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**m, "format": "mmdata-webdataset-v1"}))
    with pytest.raises(ValueError, match="different formats"):
        resolve_shards([str(b), str(c)])


def _split_tasks(root: Path, n: int, per_shard: int) -> Path:
    """Shards that each hold one task: txt2img, edge2img, txt2img, edge2img, ..."""
    tasks = ("txt2img",) * per_shard + ("edge2img",) * per_shard
    return write_dataset(root, n=n, per_shard=per_shard, tasks=tasks)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_a_worker_without_usable_samples_yields_nothing(tmp_path: Path) -> None:
    """Workers whose shards hold none of the mixture's tasks stop; training goes on with the rest."""
    root = _split_tasks(tmp_path / "split", n=8, per_shard=2)  # 4 shards, 2 of them edge2img only
    cfg = DataConfig(shards=[str(root)], num_workers=4, shuffle_buffer=4, mixture={"txt2img": 1.0})
    batches = list(itertools.islice(iter(build_loader(cfg, 2, 8, seed=0)), 16))
    assert len(batches) == 16 and {t for b in batches for t in b["task"]} == {"txt2img"}
    # fewer samples than workers (split by sample): the workers without one stop at once
    few = write_dataset(tmp_path / "few", n=3, per_shard=3)
    cfg = DataConfig(shards=[str(few)], num_workers=4, shuffle_buffer=1)
    batches = list(itertools.islice(iter(build_loader(cfg, 1, 8, seed=0)), 9))
    assert sorted(k for b in batches for k in b["key"]) == sorted(
        [f"{i:09d}" for i in range(3)] * 3
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_no_usable_sample_anywhere_is_a_clear_error(stage1_dir: Path, workers: int) -> None:
    urls, _ = resolve_shards([str(stage1_dir)])  # retrieval samples only
    cfg = DataConfig(num_workers=workers)
    loader = ResumableLoader(urls, cfg, 4, 8, accept={"edge2img": 1.0})
    with pytest.raises(NoDataError, match="none of the .* data worker.* found a usable sample"):
        next(iter(loader))


@pytest.mark.filterwarnings("ignore:skipping corrupt sample", "ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_no_data_error_counts_what_the_workers_read(tmp_path: Path, workers: int, caplog) -> None:
    """Shards whose every sample is corrupt: the workers warn '6 read, 6 corrupt' between them and
    stop; the final error said {'read': 0, 'corrupt': 0, ...} (counts came only with batches)."""
    bad = {0: "bad_png", 1: "bad_json"}
    root = write_dataset(tmp_path / "bad", n=2, per_shard=1, tasks=("txt2img",), corrupt=bad)
    cfg = DataConfig(shards=[str(root)], num_workers=workers)
    loader = build_loader(cfg, 1, 8, seed=0)
    with caplog.at_level("WARNING", logger="mmdata.train.data"):
        with pytest.raises(NoDataError) as e:
            next(iter(loader))
    # 3 empty epochs of 2 samples each, read by the one worker or split between the two
    assert "over their epochs: 6 read, 6 corrupt (3 UnidentifiedImageError, 3 bad_json), 0 " in (
        str(e.value)
    )
    assert loader.totals() == {"read": 6, "corrupt": 6, "mixture_skipped": 0, "short_shards": 0}
    if not workers:  # in this process: the worker's own warning says the same
        assert "(6 read, 6 corrupt, 0 skipped by the mixture); it stops" in caplog.text


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_resume_with_a_stopped_worker_continues_in_order(tmp_path: Path) -> None:
    """Workers 1 and 3 hold only edge2img samples (split by sample) and stop; a resumed loader still
    continues exactly where the interrupted one was."""
    root = write_dataset(tmp_path / "alt", n=8, per_shard=8, tasks=("txt2img", "edge2img"))
    cfg = DataConfig(shards=[str(root)], num_workers=4, shuffle_buffer=1, mixture={"txt2img": 1.0})
    reference = list(itertools.islice(iter(build_loader(cfg, 1, 8, seed=2)), 11))
    assert {t for b in reference for t in b["task"]} == {"txt2img"}
    first = build_loader(cfg, 1, 8, seed=2)
    consumed = list(itertools.islice(iter(first), 6))  # the last one from worker 2: 0 is next
    state = json.loads(json.dumps(first.state_dict()))
    rest = list(itertools.islice(iter(build_loader(cfg, 1, 8, seed=2, state=state)), 5))
    assert keys_of(consumed + rest) == keys_of(reference)


def test_missing_shard_is_an_error_up_front(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "gone", n=36, per_shard=12)
    (root / "00001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 3 shard.* are missing: 00001.tar"):
        resolve_shards([str(root)])


def test_short_shard_is_counted_and_warned(tmp_path: Path, caplog) -> None:
    """A shard holding fewer samples than manifest.json records: a warning up front (its size), a
    warning naming it once read, and `short_shards` in the loader's totals (log.jsonl)."""
    root = write_dataset(tmp_path / "short", n=24, per_shard=12)
    small = write_dataset(tmp_path / "small", n=5, per_shard=5)
    (root / "00001.tar").write_bytes((small / "00000.tar").read_bytes())
    cfg = DataConfig(shards=[str(root)], num_workers=0, shuffle_buffer=4)
    with caplog.at_level("WARNING", logger="mmdata.train.data"):
        loader = build_loader(cfg, 4, 8, seed=0)
        batches = list(itertools.islice(iter(loader), 10))  # past the first epoch (17 samples)
    assert "1 shard(s) differ in size from its manifest.json" in caplog.text
    assert caplog.text.count("00001.tar yielded 5 of the 12 samples its manifest records") == 1
    assert loader.totals()["short_shards"] == 1 and len(batches) == 10
