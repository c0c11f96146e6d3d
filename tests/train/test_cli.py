"""`mmdata train`, `mmdata sample`, `mmdata evaluate` and the evaluation proxies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from trainfix import draw, tiny_model

from mmdata.cli import main
from mmdata.train import checkpoint as ckpt
from mmdata.train.evaluate import (
    Backends,
    EvalConfig,
    InceptionFeatures,
    border_contrast_mask,
    canny_edges,
    edge_f1,
    evaluate,
    frechet_distance,
    iou,
    score_sample,
)
from mmdata.train.generate import read_instructions


def _tiny_sets() -> list[str]:
    """`--set` flags of the tiny model every CLI run here trains."""
    m = tiny_model()
    sets = [
        f"model.image_size={m.image_size}",
        f"model.base_channels={m.base_channels}",
        "model.channel_mults=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_levels=[1]",
        "model.head_channels=16",
        "model.cond_dim=32",
        "data.num_workers=0",
        "progress=false",
        "log_every=2",
    ]
    return [a for s in sets for a in ("--set", s)]


def _train(argv: list[str], text_encoder) -> int:
    """`mmdata train ARGV` in-process, reusing the session's loaded MiniLM (same weights)."""
    from mmdata.train import loop

    original = loop.TextEncoder
    loop.TextEncoder = lambda cfg, device: text_encoder
    try:
        return main(["train", *argv])
    finally:
        loop.TextEncoder = original


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, stage2_dir: Path, text_encoder) -> Path:
    """A tiny stage-2 run trained through `mmdata train`."""
    out = tmp_path_factory.mktemp("cli_run")
    rc = _train(
        [
            "--shards",
            str(stage2_dir),
            "--output",
            str(out),
            "--stage",
            "2",
            "--max-steps",
            "4",
            "--batch-size",
            "4",
            *_tiny_sets(),
            "--mixture",
            '{"edge2img": 0.5, "mask2img": 0.5}',
        ],
        text_encoder,
    )
    assert rc == 0
    return out


def test_train_command_writes_a_checkpoint(run_dir: Path) -> None:
    path = ckpt.latest_checkpoint(run_dir)
    assert path is not None and path.name == "step_00000004"
    cfg = ckpt.read_config(path)
    assert cfg.stage == 2 and cfg.data.mixture == {"edge2img": 0.5, "mask2img": 0.5}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert set().union(*(r["tasks"] for r in log)) <= {"edge2img", "mask2img"}


def test_init_from_takes_a_run_dir_or_a_checkpoint_dir(
    run_dir: Path, tmp_path: Path, stage2_dir: Path, text_encoder, caplog, capsys
) -> None:
    """--init-from resolves a run dir to its latest checkpoint, as --checkpoint of sample and
    evaluate does; a checkpoint dir is taken as it is."""
    latest = ckpt.latest_checkpoint(run_dir)
    base = ["--shards", str(stage2_dir), "--stage", "2", "--max-steps", "1", "--batch-size", "2"]
    for name, init in (("from_run", run_dir), ("from_checkpoint", latest)):
        caplog.clear()
        argv = [*base, "--output", str(tmp_path / name), "--init-from", str(init), *_tiny_sets()]
        with caplog.at_level("INFO", logger="mmdata.train.loop"):
            assert _train(argv, text_encoder) == 0
        assert f"stage 2 starts from {latest} (ema weights)" in caplog.text
        assert ckpt.latest_checkpoint(tmp_path / name) is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [*base, "--output", str(tmp_path / "x"), "--init-from", str(empty), *_tiny_sets()]
    assert _train(argv, text_encoder) == 2
    assert f"init_from: no checkpoint in {empty}" in capsys.readouterr().err


def test_init_from_with_another_model_says_which_side_is_which(
    run_dir: Path, tmp_path: Path, stage2_dir: Path, text_encoder, capsys
) -> None:
    """The model-config diff labels the checkpoint's value and this run's; the run folder is not
    created."""
    out = tmp_path / "changed"
    argv = ["--shards", str(stage2_dir), "--output", str(out), "--init-from", str(run_dir)]
    argv += [*_tiny_sets(), "--set", "model.base_channels=32", "--set", "model.num_res_blocks=2"]
    assert _train(argv, text_encoder) == 2
    err = capsys.readouterr().err
    assert "has a different model config: " in err
    assert "model.base_channels: checkpoint has 16, this run's config has 32" in err
    assert "model.num_res_blocks: checkpoint has 1, this run's config has 2" in err
    assert not out.exists()


def test_sample_command(run_dir: Path, tmp_path: Path) -> None:
    edge = draw("red", "circle", 16, np.random.default_rng(0))
    edge.save(tmp_path / "edge.png")
    instr = [
        {
            "instruction": "Draw [ref#1] as a red circle",
            "num_images": 2,
            "seed": 3,
            "context": [
                {
                    "marker": "[ref#1]",
                    "text": "[ref#1] edge map",
                    "image": "edge.png",
                    "role": "edge",
                }
            ],
        },
        {"instruction": "a blue square"},
    ]
    (tmp_path / "instr.json").write_text(json.dumps(instr))
    out = tmp_path / "images"
    args = [
        "sample",
        "--checkpoint",
        str(run_dir),
        "--instruction",
        str(tmp_path / "instr.json"),
        "--output",
        str(out),
        "--steps",
        "3",
    ]
    assert main(args) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["0000_00.png", "0000_01.png", "0001_00.png"]
    assert Image.open(out / "0000_00.png").size == (16, 16)
    first = np.asarray(Image.open(out / "0000_00.png"))
    assert main(args) == 0  # same seed, same images
    assert np.array_equal(first, np.asarray(Image.open(out / "0000_00.png")))


def test_train_refuses_wrong_shards_before_building_the_model(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from mmdata.train import loop

    def never(*a, **k):
        raise AssertionError("the trainer started")

    monkeypatch.setattr(loop, "train", never)
    out = str(tmp_path / "run")
    assert main(["train", "--shards", str(tmp_path / "nope"), "--output", out]) == 2
    assert "nope': no such file or folder" in capsys.readouterr().err
    pairs = tmp_path / "pairs"  # what `mmdata ingest` writes: pairs, not instruction samples
    pairs.mkdir()
    (pairs / "manifest.json").write_text(json.dumps({"job": "ingest", "shards": []}))
    assert main(["train", "--shards", str(pairs), "--output", out]) == 2
    assert "written by `mmdata ingest`, not instruction samples" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not an instruction JSON file"),
        ('["a", "b"]', "expected an object"),
        ('{"instruction": "x [ref#1]", "context": null}', "must match the context"),
        ('{"instruction": "x", "context": "edge.png"}', "'context' must be a list"),
        ('{"instruction": "x [ref#1]", "context": ["edge.png"]}', "needs 'marker' and 'image'"),
        (
            '{"instruction": "x [ref#1]", "context": [{"marker": "[ref#1]", "image": "no.png"}]}',
            "context image .* not found",
        ),
        ('{"instruction": "x", "num_images": 0}', "'num_images' must be an integer >= 1"),
        ('{"instruction": "x", "num_images": "four"}', "'num_images' must be an integer"),
        ("[]", "holds no instructions"),
        ('[{"instruction": ""}]', "'instruction' .* is required"),
        ('{"instruction": "   "}', "'instruction' .* is required"),
    ],
)
def test_bad_instruction_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "i.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_instructions(tmp_path / "i.json")


def test_unreadable_context_image_and_devices(tmp_path: Path) -> None:
    from mmdata.train.evaluate import pick_device
    from mmdata.train.generate import instruction_batch

    (tmp_path / "edge.png").write_text("not an image")
    doc = {"instruction": "x [ref#1]", "context": [{"marker": "[ref#1]", "image": "edge.png"}]}
    (tmp_path / "i.json").write_text(json.dumps(doc))
    (ins,) = read_instructions(tmp_path / "i.json")
    with pytest.raises(ValueError, match="edge.png.* cannot be read"):
        instruction_batch(ins, 16, 3)
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        pick_device("foo")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")


def test_instruction_markers_must_match(tmp_path: Path) -> None:
    bad = {
        "instruction": "use [ref#1] and [ref#2]",
        "context": [{"marker": "[ref#1]", "image": "x.png"}],
    }
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="one to one"):
        read_instructions(tmp_path / "bad.json")


def test_evaluate_writes_figures_and_grid(
    run_dir: Path, stage2_dir: Path, tmp_path: Path, text_encoder
) -> None:
    ec = EvalConfig(
        checkpoint=str(ckpt.latest_checkpoint(run_dir)),
        shards=[str(stage2_dir)],
        output=str(tmp_path / "eval"),
        num_samples=8,
        batch_size=8,
        steps=2,
        model_backends=False,
    )
    figures = evaluate(ec, text_encoder)
    saved = json.loads((tmp_path / "eval" / "figures.json").read_text())
    assert saved["num_samples"] == 8 and np.isfinite(saved["fid"]) and saved["fid"] >= 0
    per = figures["per_task"]
    assert set(per) == {"txt2img", "edge2img", "mask2img", "retrieval"}
    assert 0 <= per["edge2img"]["edge_f1_canny"] <= 1 and 0 <= per["mask2img"]["mask_iou"] <= 1
    assert "neighbour_feature_similarity" in per["retrieval"]
    assert saved["backends"]["mask"] == "border-contrast proxy"
    assert all("target_feature_similarity" in v for v in per.values())
    grid = Image.open(tmp_path / "eval" / "grid.png")
    assert grid.size == (5 * 16, 8 * 16)  # up to 3 context + target + generated per row


def test_proxies_on_known_images() -> None:
    img = np.asarray(draw("blue", "square", 48, np.random.default_rng(0)))
    edges = canny_edges(img)
    assert edge_f1(edges, edges) == 1.0 and edge_f1(edges, np.zeros_like(edges)) == 0.0
    mask = border_contrast_mask(img)
    truth = np.asarray(img).astype(int)
    truth = (truth.max(-1) - truth.min(-1)) > 100
    assert iou(mask, truth) > 0.9


def test_fid_inception_features() -> None:
    feats = InceptionFeatures(__import__("torch").device("cpu"))
    rng = np.random.default_rng(0)
    a = np.stack([np.asarray(draw("red", "circle", 32, rng)) for _ in range(6)])
    b = np.stack([np.asarray(draw("green", "triangle", 32, rng)) for _ in range(6)])
    fa, fb = feats(a), feats(b)
    assert fa.shape == (6, 2048)
    assert frechet_distance(fa, fa) < 1e-3 * frechet_distance(fa, fb)


def test_model_backends_score_controls() -> None:
    """With mmdata.models' U2-Netp / HED / style / EfficientNet backends (offline weights)."""
    import torch

    b = Backends.load(torch.device("cpu"))
    assert b.names()["mask"] == "u2netp" and b.names()["style"] == "ghiasi style vector"
    rng = np.random.default_rng(0)
    img = np.asarray(draw("red", "circle", 64, rng))
    truth = img.astype(int)
    mask = np.repeat(
        (((truth.max(-1) - truth.min(-1)) > 100) * 255).astype(np.uint8)[..., None], 3, -1
    )
    edge = np.repeat((canny_edges(img) * 255).astype(np.uint8)[..., None], 3, -1)
    feat = np.zeros(2048)
    s = score_sample(
        img, ["mask", "edge", "style", "subject"], [mask, edge, img, img], b, feat, [feat] * 4
    )
    assert s["mask_iou"] > 0.8 and s["edge_f1_canny"] == 1.0 and 0 <= s["edge_f1_hed"] <= 1
    assert s["style_vector_similarity"] > 0.99 and s["subject_feature_similarity"] > 0.99


# -- review fixes ------------------------------------------------------------------------------------


def _never_train(monkeypatch) -> None:
    from mmdata.train import loop

    def never(*a, **k):
        raise AssertionError("the trainer started")

    monkeypatch.setattr(loop, "train", never)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmdata {command}: error: "), err
    return err[0]


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file or folder"),
        ("empty_dir", "is not an mmdata dataset (no manifest.json there)"),
        ("tars_no_manifest", "holds 1 .tar file(s): pass them as paths"),
        ("unfinished_job", "is incomplete: the job writing it did not finish"),
        ("text_file", "is a file but not a .tar shard"),
        ("fake_tar", "not a tar file (not a shard)"),
        ("manifest_not_json", "manifest.json is not valid JSON"),
        ("manifest_a_list", "manifest.json is not an mmdata manifest"),
        ("missing_shard", "1 of the 2 shard(s) its manifest.json lists are missing: 00001.tar"),
    ],
)
def test_bad_shards_are_one_line_errors(
    tmp_path: Path, capsys, monkeypatch, kind: str, message: str
) -> None:
    from trainfix import write_dataset

    _never_train(monkeypatch)
    spec = tmp_path / kind
    if kind == "empty_dir":
        spec.mkdir()
    elif kind == "tars_no_manifest":
        spec.mkdir()
        (spec / "00000.tar").write_bytes(b"")
    elif kind == "unfinished_job":  # a job's marker and a shard, no manifest: killed midway
        spec.mkdir()
        (spec / ".mmdata-dataset").write_text("An mmdata dataset folder")
        (spec / "00000.tar").write_bytes(b"")
    elif kind == "text_file":
        spec = tmp_path / "notes.txt"
        spec.write_text("hello")
    elif kind == "fake_tar":
        spec = tmp_path / "fake.tar"
        spec.write_text("not a tar")
    elif kind.startswith("manifest_"):
        spec.mkdir()
        (spec / "manifest.json").write_text("{x" if kind == "manifest_not_json" else "[1]")
    elif kind == "missing_shard":
        write_dataset(spec, n=8, per_shard=4)
        (spec / "00001.tar").unlink()
    rc = main(["train", "--shards", str(spec), "--output", str(tmp_path / "run")])
    assert rc == 2
    assert message in _one_line_error(capsys, "train")
    assert not (tmp_path / "run").exists()


def test_lora_config_fine_tunes_a_checkpoint(
    run_dir: Path, tmp_path: Path, stage2_dir: Path, text_encoder, capsys
) -> None:
    """The shipped lora.yaml takes its checkpoint from --init-from (the file alone has none)."""
    lora_yaml = str(Path(__file__).parents[2] / "mmdata" / "train" / "configs" / "lora.yaml")
    base = ["--config", lora_yaml, "--shards", str(stage2_dir), "--max-steps", "2"]
    base += ["--batch-size", "2", *_tiny_sets()]
    out = tmp_path / "lora"
    assert _train([*base, "--output", str(out), "--init-from", str(run_dir)], text_encoder) == 0
    cfg = ckpt.read_config(ckpt.latest_checkpoint(out))
    assert cfg.lora.enabled and cfg.lora.r == 32 and cfg.init_from == str(run_dir)
    # without a checkpoint to start from it is still a clear error
    assert _train([*base, "--output", str(tmp_path / "no_init")], text_encoder) == 2
    assert "LoRA fine-tunes a checkpoint: set init_from" in _one_line_error(capsys, "train")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-samples", "0"], "--num-samples must be an integer >= 1, got 0"),
        (["--num-samples", "-3"], "--num-samples must be an integer >= 1, got -3"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["--text-scale", "nan"], "--text-scale must be a finite number"),
        (["--tasks", "txt2imgg"], "--tasks: unknown task(s) ['txt2imgg']"),
    ],
)
def test_evaluate_validates_its_arguments(
    tmp_path: Path, capsys, monkeypatch, flags: list[str], message: str
) -> None:
    from mmdata.train import evaluate as ev

    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluation started"))
    argv = ["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--shards", str(tmp_path)]
    assert main([*argv, "--output", str(tmp_path / "eval"), *flags]) == 2
    assert message in _one_line_error(capsys, "evaluate")


def test_evaluate_figures_are_strict_json(
    run_dir: Path, stage2_dir: Path, tmp_path: Path, text_encoder
) -> None:
    """One sample: FID cannot be computed; figures.json says null and why (no NaN)."""
    ec = EvalConfig(
        checkpoint=str(ckpt.latest_checkpoint(run_dir)),
        shards=[str(stage2_dir)],
        output=str(tmp_path / "eval"),
        num_samples=1,
        batch_size=1,
        steps=1,
        model_backends=False,
    )
    figures = evaluate(ec, text_encoder)

    def no_constants(name: str):
        raise AssertionError(f"{name} in figures.json")

    saved = json.loads(
        (tmp_path / "eval" / "figures.json").read_text(), parse_constant=no_constants
    )
    assert saved["num_samples"] == 1 and saved["fid"] is None and figures["fid"] is None
    assert saved["undefined"] == {"fid": "FID needs at least 2 samples, got 1"}
    for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=no_constants)


def test_sample_refuses_an_empty_instruction_list(run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "none.json").write_text("[]")
    argv = ["sample", "--checkpoint", str(run_dir), "--instruction", str(tmp_path / "none.json")]
    assert main([*argv, "--output", str(tmp_path / "images")]) == 2
    assert "holds no instructions (an empty list)" in _one_line_error(capsys, "sample")
    assert not (tmp_path / "images").exists()
