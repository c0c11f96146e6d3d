"""Configuration: one dataclass per stage, composed per job.

Configs load from YAML (`from_yaml`) or dicts (`from_dict`); unknown keys fail loudly; `validate()` checks
ranges. Every field is also a CLI flag (`--quality.min_side 48`), see `add_config_flags`. The resolved config
is stored in the dataset manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmdata.errors import os_error_reason

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of range."""


def opt(
    default: Any = dataclasses.MISSING, help: str = "", factory: Any = dataclasses.MISSING
) -> Any:
    """A config field with its CLI help text (shown by `mmdata <job> --help`)."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class IngestConfig:
    """Decoding and caption rules applied to every input record."""

    max_file_bytes: int = opt(
        64 * 1024 * 1024, "files larger than this (bytes) are rejected unread (file_too_large)"
    )
    max_pixels: int = opt(
        64_000_000,
        "images with more pixels are rejected from their header, before decoding "
        "(decompression-bomb guard)",
    )
    max_side: int = opt(20_000, "images with a longer side (px) are rejected from their header")
    max_caption_chars: int = opt(
        1000, "longer captions are rejected (caption_too_long) after whitespace is normalised"
    )
    caption_field: str = opt("caption", "sidecar JSON key / manifest column holding the caption")
    path_field: str = opt("path", "manifest column holding the image path")
    key_field: str = opt("key", "manifest column holding a record key (optional)")
    full_jpeg_decode: bool = opt(
        False,
        "check upright RGB JPEGs by a full-size decode; by default they are decoded at 1/8 DCT scale, "
        "which entropy-decodes the same data and rejects the same files about 2-3x faster",
    )
    bytes_by_reference: bool = opt(
        True,
        "images kept byte for byte from local files travel between stages as (file, offset, CRC-32) "
        "and are re-read where needed, instead of being copied through the runner; remote sources "
        "always carry their bytes",
    )

    def validate(self) -> None:
        _positive(self, "max_file_bytes", "max_pixels", "max_side", "max_caption_chars")


@dataclass
class QualityConfig:
    """Technical quality filter thresholds (see mmdata/core/quality.py)."""

    min_side: int = opt(32, "reject images whose shorter side (px) is below this")
    max_aspect_ratio: float = opt(3.0, "reject images whose long/short side ratio is above this")
    min_laplacian_var: float = opt(
        10.0, "blur: reject images whose grey Laplacian variance is below this"
    )
    min_std: float = opt(
        3.0, "near-uniform: reject images whose grey-level std (0-255) is below this"
    )

    def validate(self) -> None:
        _positive(self, "min_side")
        if self.max_aspect_ratio < 1:
            raise ConfigError("quality.max_aspect_ratio must be >= 1")
        if self.min_laplacian_var < 0 or self.min_std < 0:
            raise ConfigError("quality thresholds must be >= 0")


@dataclass
class ShardConfig:
    """Shard writer limits."""

    maxcount: int = opt(1000, "samples per shard")
    maxsize: int = opt(
        512 * 1024 * 1024,
        "bytes per shard's tar (its samples' members with their 512-byte headers and padding; the "
        "archive's end adds at most 10 KB; a single larger sample still gets its own shard)",
    )

    def validate(self) -> None:
        _positive(self, "maxcount", "maxsize")


DEMO_TASKS = ("txt2img",)
INPUT_HELP = "a folder of images with sidecar captions, a manifest (.parquet/.csv/.jsonl) or WebDataset .tar shards"
INPUT_KIND_HELP = (
    "auto|folder|manifest|webdataset; auto: a .parquet/.csv/.jsonl file is a manifest, .tar files "
    "are WebDataset shards, a folder of images is a folder"
)
OUTPUT_HELP = "dataset folder (new, empty, or an mmdata dataset to update)"


@dataclass
class DemoConfig:
    """The main job: ingest -> quality filter -> txt2img instruction samples -> shards.

    `input` defaults to the bundled sample corpus; `input_kind` "auto" picks folder / manifest / webdataset
    from the path (a .parquet/.csv/.jsonl file is a manifest, .tar files are WebDataset shards).
    """

    input: str = opt("", f"source: {INPUT_HELP} (default: the bundled sample corpus)")
    input_kind: str = opt("auto", INPUT_KIND_HELP)
    output: str = opt("out/demo", OUTPUT_HELP)
    seed: int = opt(0, "seed of every random choice (template picks); same seed, same shards")
    templates_dir: str = opt("", "instruction templates folder (default: the bundled templates/)")
    tasks: list[str] = opt(
        help="tasks to build (comma-separated); this job builds txt2img only so far",
        factory=lambda: ["txt2img"],
    )
    ingest: IngestConfig = field(default_factory=IngestConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def validate(self) -> None:
        if self.input_kind not in ("auto", "folder", "manifest", "webdataset"):
            raise ConfigError(
                f"input_kind must be auto|folder|manifest|webdataset, not {self.input_kind!r}"
            )
        if not self.output:
            raise ConfigError("output is required")
        from mmdata.core.tasks import TASKS

        for t in self.tasks:
            if t not in TASKS:
                raise ConfigError(f"unknown task {t!r}; known: {', '.join(sorted(TASKS))}")
        if self.tasks != list(DEMO_TASKS):
            raise ConfigError(
                f"tasks {self.tasks!r}: this job builds {', '.join(DEMO_TASKS)} samples only; the other "
                "tasks' generation stages are not part of it yet"
            )
        self.ingest.validate()
        self.quality.validate()
        self.shards.validate()


@dataclass
class IngestJobConfig:
    """`mmdata ingest`: sources -> decoded, checked image-text pairs as WebDataset shards."""

    input: str = opt("", f"source (required): {INPUT_HELP}")
    input_kind: str = opt("auto", INPUT_KIND_HELP)
    output: str = opt("out/pairs", OUTPUT_HELP)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("input is required")
        DemoConfig(input=self.input, input_kind=self.input_kind, output=self.output).validate()
        self.ingest.validate()
        self.shards.validate()


def _positive(obj: Any, *names: str) -> None:
    for n in names:
        if getattr(obj, n) <= 0:
            raise ConfigError(f"{type(obj).__name__}.{n} must be > 0, got {getattr(obj, n)!r}")


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build a config dataclass from a dict; unknown keys and wrong types raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(path + k for k in unknown)} for {cls.__name__}"
        )
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            if value is None:  # an empty YAML section (`ingest:` with its keys commented out)
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{path}{f.name} must be a mapping")
            kwargs[f.name] = from_dict(hint, value, f"{path}{f.name}.")
        else:
            kwargs[f.name] = _coerce(value, hint, path + f.name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, name) for v in value]
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
        if hint in (int, float, str):
            if hint in (int, float) and isinstance(value, bool):
                raise ValueError(value)  # YAML `true` is not the number 1
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            out = hint(value)
            if hint is float and not math.isfinite(out):
                raise ValueError(value)
            return out
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}") from None
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _yaml_problem(e: Exception) -> str:
    """A YAML parse error in one line (PyYAML's own text spans four, with the file name twice)."""
    problem = getattr(e, "problem", None)
    if not problem:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ': ' if context else ''}{problem}{where}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping; unreadable or malformed files raise ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as e:
        raise ConfigError(
            f"config file {str(path)!r} cannot be read: {os_error_reason(e)}"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"config file {str(path)!r} is not valid YAML: {_yaml_problem(e)}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: top level must be a mapping")
    return data


def from_yaml(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, load_yaml(path))


def _flag_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _flag_fields(hint, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append((prefix + f.name, hint, default, f.metadata.get("help", "")))
    return out


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()
) -> None:
    """Add one `--a.b` flag per config field (default: unset, so YAML/defaults apply)."""
    group = parser.add_argument_group(f"{cls.__name__} (also settable in --config YAML)")
    group.add_argument("--config", help="YAML config file; flags override it")
    for name, hint, default, text in _flag_fields(cls):
        if name in skip:
            continue
        shown = ",".join(default) if isinstance(default, list) else default
        group.add_argument(
            f"--{name}",
            dest=f"cfg::{name}",
            default=None,
            metavar=getattr(hint, "__name__", "LIST").upper(),
            help=text if "default:" in text else f"{text} (default: {shown!r})".lstrip(),
        )


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Merge defaults <- --config YAML <- flags <- overrides, then validate."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        data = load_yaml(args.config)
    for k, v in vars(args).items():
        if k.startswith("cfg::") and v is not None:
            _set_path(data, k[5:], v)
    for k, v in overrides.items():
        if v is not None:
            _set_path(data, k, v)
    cfg = from_dict(cls, data)
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts; an empty section (None, as YAML gives `a:` with nothing under it)
    becomes a mapping, a section that is not one raises ConfigError naming it."""
    *parents, last = dotted.split(".")
    where = ""
    for p in parents:
        where += p
        if data.get(p) is None:
            data[p] = {}
        elif not isinstance(data[p], dict):
            raise ConfigError(f"{where} must be a mapping")
        data = data[p]
        where += "."
    data[last] = value
