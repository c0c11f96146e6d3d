"""train, sample, evaluate, templates and corpus take `--max_steps` as well as `--max-steps` (the Beam
jobs' underscore style), as the same option: same value, same checks, one line in --help."""

from __future__ import annotations

import pytest

from mmdata.cli import build_parser


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["train", "--max_steps", "3", "--batch_size", "2", "--init_from", "run"],
            {"max_steps": 3, "batch_size": 2, "init_from": "run"},
        ),
        (["train", "--max_steps=4"], {"max_steps": 4}),
        (
            ["sample", "--checkpoint", "c", "--instruction", "i", "--output", "o"]
            + ["--num_images", "2", "--text_scale", "1.5"],
            {"num_images": 2, "text_scale": 1.5},
        ),
        (
            ["evaluate", "--checkpoint", "c", "--shards", "s", "--output", "o"]
            + ["--num_samples", "8", "--context_scale", "2"],
            {"num_samples": 8, "context_scale": 2.0},
        ),
        (
            ["templates", "generate", "--templates_dir", "d", "--top_p", "0.5"]
            + ["--max_retries", "1", "--no_cache", "--group_markers"],
            {
                "templates_dir": "d",
                "top_p": 0.5,
                "max_retries": 1,
                "no_cache": True,
                "group_markers": True,
            },
        ),
        (
            ["templates", "review", "--task", "edge2img", "--yes_stdin", "--verbose_reasons"],
            {"yes_stdin": True, "verbose_reasons": True},
        ),
        (
            ["corpus", "icons", "--out", "o", "--per_set_limit", "3", "--optimize_png"],
            {"per_set_limit": 3, "optimize_png": True},
        ),
        (
            ["corpus", "emoji", "--out", "o", "--max_subjects", "5", "--exclude_categories", "A,B"],
            {"max_subjects": 5, "exclude_categories": ["A", "B"]},
        ),
    ],
)
def test_underscore_spellings_are_the_same_options(parser, argv, expected) -> None:
    args, rest = parser.parse_known_args(argv)
    assert rest == []
    assert {k: getattr(args, k) for k in expected} == expected
    dashed = [a.replace("_", "-") if a.startswith("--") else a for a in argv]
    again, _ = parser.parse_known_args(dashed)
    assert vars(again) == vars(args)


def test_an_alias_keeps_the_checks_and_help_stays_short(parser, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["corpus", "icons", "--out", "o", "--per_set_limit", "0"])
    assert e.value.code == 2
    assert "argument --per-set-limit: must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "--max-steps MAX_STEPS" in out and "--max_steps" not in out
    assert "every dashed option also takes underscores" in " ".join(out.split())
