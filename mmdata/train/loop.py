"""One training function for both stages of the recipe.

Stage 1: retrieval-cluster shards (target + 3 neighbours as context). Stage 2: the instruction mixture,
starting from a stage-1 checkpoint (`init_from`). Same loop, same model; the config says which.

Per step: stream a batch -> encode the payload text and each context entry's `marker + text` with the
frozen text encoder -> condition dropout (two exclusive cases, default 10 % each: text + context dropped;
context only dropped) -> noise to a random timestep -> MSE on the predicted noise -> AdamW step -> EMA.
bf16 autocast on CUDA, DDP through accelerate (`accelerate launch -m mmdata.cli train ...`).

All randomness of a step (timesteps, noise, dropout) is seeded by (seed, rank, step), and the data
stream is resumable at its position, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmdata.errors import check_output_folder
from mmdata.train import checkpoint as ckpt
from mmdata.train.config import TrainConfig
from mmdata.train.data import ResumableLoader, build_loader, to_unit
from mmdata.train.diffusion import alphas_cumprod, q_sample
from mmdata.train.model import Conditioning, InstructUNet, context_parameter_share
from mmdata.train.text import TextEncoder

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"


def _checkpoint_step(path: Path | None) -> int:
    return ckpt.read_state(path)["step"] if path else 0


def _trim_log(path: Path, last_step: int) -> None:
    """Keep the log lines up to the step a run starts from (a new run: none), so a resumed run's log
    does not repeat the steps done after its checkpoint, and a new run does not follow an old one."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except ValueError:
            continue
    path.write_text("".join(f"{line}\n" for line in keep))


def _lora_config_diff(saved: TrainConfig, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Differences between the `lora` sections of a checkpoint's config and this run's: adapters of
    another rank or on other modules do not load, other alpha/dropout would silently change them.
    Settings of a LoRA section that is off on both sides build nothing and are not compared."""
    a, b = saved.to_dict()["lora"], cfg.to_dict()["lora"]
    if not (a["enabled"] or b["enabled"]):
        return {}
    return {f"lora.{k}": (a[k], b[k]) for k in a if a[k] != b.get(k)}


def _text_token_limit(text_encoder: TextEncoder) -> int | None:
    """The most tokens the loaded text encoder takes (its position embeddings / open_clip context
    length), or None where it does not say. A longer text.max_tokens crashes (MiniLM) or silently
    truncates (open_clip) only once a long text comes."""
    model, tokenizer = (
        getattr(text_encoder, "_model", None),
        getattr(text_encoder, "_tokenizer", None),
    )
    if tokenizer is not None and isinstance(getattr(tokenizer, "context_length", None), int):
        return tokenizer.context_length  # open_clip
    try:
        limit = model[0].auto_model.config.max_position_embeddings  # sentence-transformers
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return limit if isinstance(limit, int) else None


# -- pieces used by training, sampling and evaluation ------------------------------------------------


def step_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def encode_conditioning(
    batch: dict[str, Any], text_encoder: TextEncoder, device: torch.device | str
) -> Conditioning:
    """Build the model's conditioning from a loader batch (images uint8 -> [-1, 1], texts -> embeddings)."""
    text = text_encoder.encode(batch["text"])
    flat = [t for row in batch["context_texts"] for t in row]
    n, k = batch["context_mask"].shape
    ctx_emb = text_encoder.encode_pooled(flat).view(n, k, -1)
    return Conditioning(
        text_tokens=text.tokens.to(device),
        text_mask=text.mask.to(device),
        text_pooled=text.pooled.to(device),
        ctx_images=to_unit(batch["context"].to(device, non_blocking=True)),
        ctx_emb=ctx_emb.to(device),
        ctx_mask=batch["context_mask"].to(device),
    )


def sample_dropout(
    n: int,
    p_text_and_context: float,
    p_context: float,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two condition-dropout cases, exclusive: (drop_text (N,), drop_context (N,)) bools.

    With probability p_text_and_context a sample loses text and context; with probability p_context it
    loses only its context; otherwise it keeps both.
    """
    u = torch.rand(n, generator=generator, device=device)
    both = u < p_text_and_context
    ctx_only = (u >= p_text_and_context) & (u < p_text_and_context + p_context)
    return both, both | ctx_only


def diffusion_loss(
    model: torch.nn.Module,
    batch: dict[str, Any],
    text_encoder: TextEncoder,
    acp: torch.Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device | str,
) -> torch.Tensor:
    """The training objective on one loader batch: condition dropout, noising, MSE on the noise."""
    n = batch["target"].shape[0]
    cond = encode_conditioning(batch, text_encoder, device)
    drop_text, drop_ctx = sample_dropout(
        n, cfg.drop_text_and_context, cfg.drop_context, gen, device
    )
    cond = cond.drop(text=drop_text, context=drop_ctx)
    x0 = to_unit(batch["target"].to(device, non_blocking=True))
    t = torch.randint(0, len(acp), (n,), generator=gen, device=device)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    pred = model(q_sample(x0, t, noise, acp), t, cond)
    return F.mse_loss(pred.float(), noise)


class EMA:
    """Exponential moving average of a model's parameters and buffers (float32 copies)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if v.dtype.is_floating_point:
                s.lerp_(v.detach().float(), 1.0 - decay)
            else:
                s.copy_(v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)


def ema_decay(cfg: TrainConfig, step: int) -> float:
    if step < cfg.ema_warmup_steps:
        return 0.0
    return min(cfg.ema_decay, (1 + step) / (10 + step))


def lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


# Settings a resumed run takes from its own config (not from the checkpoint); changes are logged.
RESUME_SETTINGS = (
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "ema_decay",
    "ema_warmup_steps",
    "batch_size",
    "drop_text_and_context",
    "drop_context",
)


def apply_resumed_settings(
    optimizer: Any, scheduler: Any, saved: TrainConfig, cfg: TrainConfig, report: bool = True
) -> None:
    """After loading a checkpoint's optimiser and scheduler state (which carry its lr and weight
    decay), put this run's lr, weight decay and warmup in place: a value changed on --resume applies
    from the resumed step. Changes to `RESUME_SETTINGS` are logged as a warning when `report` (the
    main process: every process of a multi-GPU run resumes, the run's changes are said once)."""
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
        group["weight_decay"] = cfg.weight_decay
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    scheduler.lr_lambdas = [lr_lambda(cfg.warmup_steps)] * len(optimizer.param_groups)
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * factor
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    old, new = saved.to_dict(), cfg.to_dict()
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in RESUME_SETTINGS if old[k] != new[k]]
    if changed and report:
        log.warning(
            "resume: this run's config changes %s (the checkpoint's values are replaced from "
            "step %d on)",
            ", ".join(changed),
            scheduler.last_epoch,
        )


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    checkpoint: Path | None
    context_share: dict[str, float]
    main_process: bool = True  # False on the other processes of a multi-process run


# -- the training function -----------------------------------------------------------------------------


def train(cfg: TrainConfig, text_encoder: TextEncoder | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg`; return the final step and the loss of every step.

    Args:
        cfg: the run; `cfg.output_dir` receives config.json, log.jsonl and checkpoints/.
        text_encoder: an already loaded frozen encoder to reuse (else built from `cfg.text`).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    cfg.validate()
    check_output_folder(cfg.output_dir)  # under a file: say so now, not once the model is built
    cuda = torch.cuda.is_available()
    precision = ("bf16" if cuda else "no") if cfg.mixed_precision == "auto" else cfg.mixed_precision
    acc = Accelerator(
        mixed_precision=precision,
        cpu=not cuda,
        # the context path has no gradient in a batch without any context entry
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device, rank, world = acc.device, acc.process_index, acc.num_processes
    main = acc.is_main_process

    def say(level: int, message: str, *args: Any) -> None:
        """Log a message about the run as a whole once: on the main process (every process of a
        multi-GPU run runs this function)."""
        if main:
            log.log(level, message, *args)

    out = Path(cfg.output_dir)
    created = not out.exists()
    existing = ckpt.latest_checkpoint(out)
    if existing is not None and not cfg.resume:
        raise ValueError(
            f"{out} already holds a run (latest checkpoint {existing.name}): pass --resume to "
            "continue it, or give a new --output"
        )
    # refuse a changed model, or a wrong init_from, before anything in the run folder is touched
    init_from = None
    saved = None
    if existing is not None:
        saved = ckpt.read_config(existing)
        diff = {f"model.{k}": v for k, v in ckpt.model_config_diff(saved, cfg).items()}
        diff.update(_lora_config_diff(saved, cfg))
        if diff:
            raise ValueError(
                f"cannot resume {existing}: the model config changed: "
                + ckpt.describe_config_diff(diff)
            )
    elif cfg.resume:
        # validate() lets LoRA without init_from through on --resume (the checkpoint has the
        # weights); with no checkpoint the adapters would train on a random frozen UNet
        if cfg.lora.enabled and not cfg.init_from:
            raise ValueError(
                f"LoRA fine-tunes a checkpoint: set init_from (--resume found no checkpoint in {out})"
            )
        say(logging.WARNING, "resume: no checkpoint in %s; starting a new run there", out)
    if cfg.init_from and existing is None:
        try:
            init_from = ckpt.resolve_checkpoint(cfg.init_from)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"init_from: {e}") from None
        init_cfg = ckpt.read_config(init_from)
        diff = {f"model.{k}": v for k, v in ckpt.model_config_diff(init_cfg, cfg).items()}
        if diff:
            raise ValueError(
                f"init_from {init_from} has a different model config: "
                + ckpt.describe_config_diff(diff)
            )
        if init_cfg.lora.enabled:
            raise ValueError(f"init_from {init_from} is a LoRA run; start from its base instead")

    text_encoder = text_encoder or TextEncoder(cfg.text, device)
    if text_encoder.dim != cfg.model.text_dim:
        raise ValueError(
            f"model.text_dim {cfg.model.text_dim} != text encoder width {text_encoder.dim} "
            f"({cfg.text.backend}); set model.text_dim={text_encoder.dim}"
        )
    limit = _text_token_limit(text_encoder)
    if limit is not None and cfg.text.max_tokens > limit:
        raise ValueError(
            f"text.max_tokens {cfg.text.max_tokens} exceeds the text encoder's limit {limit} "
            f"({cfg.text.backend}); set text.max_tokens <= {limit}"
        )

    # Model: from scratch, from a previous stage (init_from), then LoRA, then resume.
    torch.manual_seed(cfg.seed)
    model = InstructUNet(cfg.model)
    share = context_parameter_share(model)
    say(
        logging.INFO,
        "model: %.1fM parameters; the context path adds %.2fM (%.2f%% of the total)",
        share["total"] / 1e6,
        share["context_added"] / 1e6,
        100 * share["share_of_total"],
    )
    resume_from = existing  # checked above: a run there is only continued with resume
    if init_from is not None:  # checked above
        model.load_state_dict(ckpt.read_weights(init_from, cfg.init_weights))
        say(
            logging.INFO,
            "stage %d starts from %s (%s weights)",
            cfg.stage,
            init_from,
            cfg.init_weights,
        )
    elif cfg.stage == 2 and resume_from is None:
        say(
            logging.WARNING,
            "stage 2 without init_from: training the instruction mixture from scratch",
        )
    if cfg.lora.enabled:
        model = ckpt.build_model_lora(model, cfg)
    model.to(device)
    ema = EMA(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps))

    step, samples_seen, data_state = 0, 0, None
    if resume_from is not None:
        model.load_state_dict(ckpt.read_weights(resume_from, "model"))
        ema.load_state_dict(ckpt.read_weights(resume_from, "ema"))
        # torch.load cannot restore onto an indexed CPU device ("cpu:0", what a torchrun CPU run
        # gets from accelerate): the CPU is the CPU
        where = torch.device("cpu") if device.type == "cpu" else device
        opt = ckpt.read_optimizer_state(resume_from, where)
        optimizer.load_state_dict(opt["optimizer"])
        scheduler.load_state_dict(opt["scheduler"])
        apply_resumed_settings(optimizer, scheduler, saved, cfg, report=main)
        state = ckpt.read_state(resume_from)
        step, samples_seen = state["step"], state["samples_seen"]
        data_state = state["data"][rank]
        say(logging.INFO, "resuming %s at step %d", resume_from, step)
        if cfg.max_steps < step:  # nothing to train: the run ends at once, say why
            say(
                logging.WARNING,
                "resume: max_steps %d is below the resumed step %d; no step is trained",
                cfg.max_steps,
                step,
            )

    model, optimizer = acc.prepare(model, optimizer)
    loader = build_loader(
        cfg.data,
        cfg.batch_size,
        cfg.model.image_size,
        cfg.seed,
        rank,
        world,
        data_state,
        pin_memory=cuda,
    )
    acp = alphas_cumprod(cfg.diffusion).to(device)
    gen = torch.Generator(device=device)
    # Only now, with model and data set up, does the folder become a run (config.json, the log).
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out / "config.json")
        _trim_log(out / LOG_FILE, _checkpoint_step(existing))
    try:
        losses: list[float] = []
        window: dict[str, Any] = {"loss": [], "samples": 0, "wait": 0.0, "tasks": {}}
        last_ckpt: Path | None = resume_from
        bar = tqdm(
            total=cfg.max_steps,
            initial=step,
            disable=not (cfg.progress and acc.is_main_process),
            desc=f"stage {cfg.stage}",
            dynamic_ncols=True,
        )
        t_window = time.perf_counter()
        batches = iter(loader)
        model.train()
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            window["wait"] += time.perf_counter() - t0
            n = batch["target"].shape[0]

            torch.manual_seed(step_seed(cfg.seed, rank, step, "torch"))  # nn.Dropout etc.
            gen.manual_seed(step_seed(cfg.seed, rank, step))
            with acc.autocast():
                loss = diffusion_loss(model, batch, text_encoder, acp, cfg, gen, device)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(acc.unwrap_model(model), ema_decay(cfg, step))
            step += 1
            samples_seen += n * world

            losses.append(loss.item())
            window["loss"].append(loss.item())
            window["samples"] += n
            for task in batch["task"]:
                window["tasks"][task] = window["tasks"].get(task, 0) + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - t_window
                record = {
                    "step": step,
                    "loss": sum(window["loss"]) / len(window["loss"]),
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": window["samples"] * world / max(elapsed, 1e-9),
                    "data_wait_frac": window["wait"] / max(elapsed, 1e-9),
                    "samples_seen": samples_seen,
                    "tasks": window["tasks"],
                    **loader.totals(),
                }
                if cuda:
                    record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                if acc.is_main_process:
                    with open(out / LOG_FILE, "a") as f:
                        f.write(json.dumps(record) + "\n")
                window = {"loss": [], "samples": 0, "wait": 0.0, "tasks": {}}
                t_window = time.perf_counter()

            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                last_ckpt = save(
                    acc, cfg, model, ema, optimizer, scheduler, step, samples_seen, loader
                )
        bar.close()
        return TrainResult(
            step=step, losses=losses, checkpoint=last_ckpt, context_share=share, main_process=main
        )
    except BaseException as exn:
        if acc.is_main_process and ckpt.latest_checkpoint(out) is None:
            _unmark_failed_run(out, created, exn, step)
        raise


def _unmark_failed_run(out: Path, created: bool, exn: BaseException, step: int) -> None:
    """A run that failed before its first checkpoint leaves no config.json (the folder is no run to
    resume or sample from); a log with steps in it is kept, ending in a `failed` record."""
    (out / "config.json").unlink(missing_ok=True)
    log_path = out / LOG_FILE
    if log_path.exists() and log_path.stat().st_size:
        with open(log_path, "a") as f:
            record = {"step": step, "failed": f"{type(exn).__name__}: {exn}"[:2000]}
            f.write(json.dumps(record) + "\n")
    else:
        log_path.unlink(missing_ok=True)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    log.warning("training failed before its first checkpoint: %s is not left as a run", out)


def save(
    acc: Any,
    cfg: TrainConfig,
    model: torch.nn.Module,
    ema: EMA,
    optimizer: Any,
    scheduler: Any,
    step: int,
    samples_seen: int,
    loader: ResumableLoader,
) -> Path:
    """Write a checkpoint; every process contributes its data position."""
    final = ckpt.checkpoint_dir(cfg.output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    positions = [loader.state_dict()]
    if acc.num_processes > 1:
        gathered: list[Any] = [None] * acc.num_processes
        torch.distributed.all_gather_object(gathered, positions[0])
        positions = gathered
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        state = {
            "step": step,
            "samples_seen": samples_seen,
            "data": positions,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        opt = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        ckpt.write_checkpoint(tmp, acc.unwrap_model(model), ema.state_dict(), opt, cfg, state)
        ckpt.publish_checkpoint(tmp, final, cfg.keep_checkpoints)
    acc.wait_for_everyone()
    return final
