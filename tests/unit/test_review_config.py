"""YAML configs with an empty section, or a section that is not a mapping (review finding 19)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mmdata.config import ConfigError, IngestJobConfig, add_config_flags, config_from_args


def _cfg(tmp_path: Path, yaml_text: str, *flags: str) -> IngestJobConfig:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml_text)
    parser = argparse.ArgumentParser()
    add_config_flags(parser, IngestJobConfig)
    args = parser.parse_args(["--config", str(path), "--input", "f", *flags])
    return config_from_args(IngestJobConfig, args)


def test_empty_section_plus_a_flag_for_it(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        "ingest:\n  # max_side: 4096\nshards:\n  maxcount: 500\n",
        "--ingest.max_side",
        "2048",
    )
    assert cfg.ingest.max_side == 2048
    assert cfg.shards.maxcount == 500


def test_empty_section_alone_means_the_defaults(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "ingest:\nshards:\n")
    assert cfg.ingest == IngestJobConfig().ingest
    assert cfg.shards == IngestJobConfig().shards


@pytest.mark.parametrize("value", ["5", "[1, 2]", "text"])
def test_section_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"^ingest must be a mapping"):
        _cfg(tmp_path, f"ingest: {value}\n", "--ingest.max_side", "2048")
    with pytest.raises(ConfigError, match=r"ingest must be a mapping"):
        _cfg(tmp_path, f"ingest: {value}\n")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("shards:\n  maxcount: [1, 2\nquality: {\n", "at line 3, column 8"),
        ("shards: {maxcount: 5\n", "at line 2, column 1"),
        ("a: b\n\tc: d\n", "at line 2, column 1"),
    ],
)
def test_yaml_syntax_error_is_one_line_naming_the_place(
    tmp_path: Path, text: str, where: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, text)
    message = str(err.value)
    assert "\n" not in message and "is not valid YAML: " in message and where in message
