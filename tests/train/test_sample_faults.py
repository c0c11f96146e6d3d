"""`mmdata sample`, `train` and `evaluate`: bad instruction files, images, flags, outputs and Ctrl-C
are one line on stderr (no traceback), refused before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import _tiny_sets, _train
from trainfix import draw

from mmdata.cli import main
from mmdata.train import checkpoint as ckpt
from mmdata.train.generate import instruction_batch, read_instructions


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, stage2_dir: Path, text_encoder) -> Path:
    """A tiny stage-2 run (2 steps) trained through `mmdata train`."""
    out = tmp_path_factory.mktemp("faults_run")
    argv = ["--shards", str(stage2_dir), "--output", str(out), "--stage", "2", "--max-steps", "2"]
    assert _train([*argv, "--batch-size", "2", *_tiny_sets()], text_encoder) == 0
    return out


def _one_line(capsys, command: str, kind: str = "error: ") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmdata {command}: {kind}"), err
    assert "Traceback" not in err[0]
    return err[0]


def _never_load(monkeypatch) -> None:
    from mmdata.train import checkpoint

    monkeypatch.setattr(
        checkpoint, "load_model", lambda *a, **k: pytest.fail("the model was loaded")
    )


def _edge(folder: Path) -> None:
    draw("red", "circle", 16, np.random.default_rng(0)).save(folder / "edge.png")


def _entry(**kw) -> dict:
    return {"marker": "[ref#1]", "text": "[ref#1] edge map", "image": "edge.png", **kw}


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ([_entry(text=["a"])], "context entry 0: 'text' must be a string, got ['a']"),
        ([_entry(text=5)], "context entry 0: 'text' must be a string, got 5"),
        ([_entry(role=5)], "context entry 0: 'role' must be a string, got 5"),
        ([_entry(marker=1)], "context entry 0: 'marker' must be a non-empty string, got 1"),
        ([_entry(marker=["[ref#1]"])], "'marker' must be a non-empty string, got ['[ref#1]']"),
        (
            [_entry(marker={"a": 1}), _entry(marker={"b": 1})],
            "context entry 0: 'marker' must be a non-empty string, got {'a': 1}",
        ),
        ([_entry(image=5)], "context entry 0: 'image' must be a non-empty string, got 5"),
        ([_entry(image=None)], "'image' must be a non-empty string, got None"),
        ([_entry(), _entry(text={})], "context entry 1: 'text' must be a string"),
    ],
)
def test_context_entries_of_the_wrong_type_are_refused(
    tmp_path: Path, context: list, message: str
) -> None:
    _edge(tmp_path)
    doc = {"instruction": "Follow [ref#1] [ref#2]: x", "context": context}
    (tmp_path / "i.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        read_instructions(tmp_path / "i.json")
    assert str(e.value).startswith(f"{tmp_path / 'i.json'} item 0 context entry ")
    assert message in str(e.value)


def test_optional_context_fields_may_be_absent_or_null(tmp_path: Path) -> None:
    _edge(tmp_path)
    doc = {
        "instruction": "Follow [ref#1]: x",
        "context": [{"marker": "[ref#1]", "image": "edge.png", "text": None, "role": None}],
    }
    (tmp_path / "i.json").write_text(json.dumps(doc))
    (ins,) = read_instructions(tmp_path / "i.json")
    assert ins.context[0]["text"] == "[ref#1]"
    assert instruction_batch(ins, 16, 3)["context_texts"][0][0] == "[ref#1]"


def test_a_bad_context_entry_fails_before_the_model_loads(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    _never_load(monkeypatch)
    _edge(tmp_path)
    doc = {"instruction": "Follow [ref#1]: x", "context": [_entry(text=["a"])]}
    (tmp_path / "i.json").write_text(json.dumps(doc))
    argv = ["sample", "--checkpoint", str(tmp_path / "nothing"), "--instruction"]
    assert main([*argv, str(tmp_path / "i.json"), "--output", str(tmp_path / "out")]) == 2
    assert "'text' must be a string, got ['a']" in _one_line(capsys, "sample")


def test_a_huge_or_undecodable_context_image_names_the_file(tmp_path: Path) -> None:
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 M pixels, a few KB
    (tmp_path / "text.png").write_text("not an image")
    for name, message in (
        ("bomb.png", r"is too large \(400,000,000 pixels, over PIL's limit"),
        ("text.png", "cannot be read: not an image PIL can decode"),
    ):
        doc = {"instruction": "x [ref#1]", "context": [{"marker": "[ref#1]", "image": name}]}
        (tmp_path / "i.json").write_text(json.dumps(doc))
        (ins,) = read_instructions(tmp_path / "i.json")
        with pytest.raises(ValueError, match=message) as e:
            instruction_batch(ins, 16, 3)
        assert repr(str(tmp_path / name)) in str(e.value)
        assert "BytesIO" not in str(e.value)


def test_sample_refuses_a_bad_context_image_before_the_model_loads(
    run_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    _never_load(monkeypatch)
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    doc = {"instruction": "x [ref#1]", "context": [{"marker": "[ref#1]", "image": "bomb.png"}]}
    (tmp_path / "i.json").write_text(json.dumps(doc))
    argv = ["sample", "--checkpoint", str(run_dir), "--instruction", str(tmp_path / "i.json")]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 2
    line = _one_line(capsys, "sample")
    assert f"{tmp_path / 'i.json'} item 0: context image" in line and "is too large" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--text-scale", "nan"], "--text-scale must be a finite number, got nan"),
        (["--context-scale", "inf"], "--context-scale must be a finite number, got inf"),
        (["--context-scale=-inf"], "--context-scale must be a finite number, got -inf"),
        (["--seed", "-5"], "--seed must be an integer >= 0, got -5"),
        (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["--num-images", "0"], "--num-images must be >= 1, got 0"),
    ],
)
def test_sample_validates_its_arguments(
    tmp_path: Path, capsys, monkeypatch, flags: list[str], message: str
) -> None:
    _never_load(monkeypatch)
    (tmp_path / "i.json").write_text('{"instruction": "a blue square"}')
    argv = ["sample", "--checkpoint", str(tmp_path / "nothing"), "--instruction"]
    argv += [str(tmp_path / "i.json"), "--output", str(tmp_path / "out"), *flags]
    assert main(argv) == 2
    assert message in _one_line(capsys, "sample")
    assert not (tmp_path / "out").exists()


def _argv(command: str, tmp_path: Path, output: str) -> list[str]:
    (tmp_path / "i.json").write_text('{"instruction": "a blue square"}')
    if command == "train":
        return ["train", "--shards", str(tmp_path), "--output", output]
    if command == "sample":
        argv = ["sample", "--checkpoint", str(tmp_path), "--instruction", str(tmp_path / "i.json")]
        return [*argv, "--output", output]
    return [
        "evaluate",
        "--checkpoint",
        str(tmp_path),
        "--shards",
        str(tmp_path),
        "--output",
        output,
    ]


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("", "--output is empty; give the folder to write to"),
        ("  ", "--output is empty; give the folder to write to"),
        ("s3://bucket/run", "--output s3://bucket/run: outputs must be local folders"),
        ("gs://bucket/run", "--output gs://bucket/run: outputs must be local folders"),
        ("file:///tmp/run", "--output file:///tmp/run: outputs must be local folders"),
    ],
)
def test_outputs_must_be_named_local_folders(
    tmp_path: Path, capsys, monkeypatch, command: str, output: str, message: str
) -> None:
    from mmdata.train import evaluate as ev
    from mmdata.train import loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("the trainer started"))
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: pytest.fail("evaluation started"))
    _never_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    argv = _argv(command, tmp_path, output)
    before = sorted(tmp_path.iterdir())
    assert main(argv) == 2
    assert message in _one_line(capsys, command)
    assert sorted(tmp_path.iterdir()) == before  # nothing written here, no ./s3:/bucket/run


def test_a_url_output_dir_in_the_config_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    from mmdata.train import loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("the trainer started"))
    argv = ["train", "--shards", str(tmp_path), "--set", "output_dir=s3://b/r"]
    assert main(argv) == 2
    assert "output_dir s3://b/r: outputs must be local folders" in _one_line(capsys, "train")


def test_ctrl_c_during_train_is_one_line(
    run_dir: Path, stage2_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from mmdata.train import loop

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    base = ["train", "--shards", str(stage2_dir), "--output"]
    assert main([*base, str(run_dir)]) == 130
    line = _one_line(capsys, "train", "interrupted")
    last = ckpt.latest_checkpoint(run_dir)
    assert f"resumed from its last checkpoint ({last})" in line and "--resume" in line
    assert main([*base, str(tmp_path / "new")]) == 130
    line = _one_line(capsys, "train", "interrupted")
    assert f"no checkpoint was written to {tmp_path / 'new'} yet" in line


def test_ctrl_c_during_sample_and_evaluate_is_one_line(
    run_dir: Path, stage2_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from mmdata.train import checkpoint, evaluate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "load_model", interrupted)
    monkeypatch.setattr(evaluate, "evaluate", interrupted)
    (tmp_path / "i.json").write_text('{"instruction": "a blue square"}')
    argv = ["sample", "--checkpoint", str(run_dir), "--instruction", str(tmp_path / "i.json")]
    assert main([*argv, "--output", str(tmp_path / "images")]) == 130
    assert "images written so far are in" in _one_line(capsys, "sample", "interrupted")
    argv = ["evaluate", "--checkpoint", str(run_dir), "--shards", str(stage2_dir)]
    assert main([*argv, "--output", str(tmp_path / "eval")]) == 130
    assert "no figures were written" in _one_line(capsys, "evaluate", "interrupted")
