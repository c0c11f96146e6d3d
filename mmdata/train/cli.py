"""`mmdata train`, `mmdata sample`, `mmdata evaluate`: thin over mmdata.train."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from mmdata.errors import check_output_folder
from mmdata.flags import accept_underscores

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the Instruct-Imagen-style model on instruction shards",
        description="Train stage 1 (retrieval shards) or stage 2 (instruction mixture, --init-from a "
        "stage-1 checkpoint). Multi-GPU: `accelerate launch -m mmdata.cli train ...`.",
    )
    p.add_argument("--config", help="TrainConfig as .json or .yaml (default: built-in defaults)")
    p.add_argument(
        "--shards", nargs="+", help="dataset roots, .tar files, brace patterns or pipe: URLs"
    )
    p.add_argument("--output", help="output directory (checkpoints, log.jsonl)")
    p.add_argument("--stage", type=int, choices=(1, 2))
    p.add_argument(
        "--init-from",
        help="checkpoint directory to start from, or a run's output dir (then its latest "
        "checkpoint), e.g. stage 1 for stage 2",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the latest checkpoint in --output (weights, optimiser state, step, data "
        "position); the model config must be unchanged. Optimiser and schedule settings of this "
        "run's config (lr, weight_decay, warmup_steps, grad_clip, ema_*, batch_size, drop_*) "
        "replace the checkpoint's from the resumed step on, and each change is logged as a warning",
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--mixture", help="task ratios overriding the manifest, JSON: '{\"txt2img\": 0.5}'"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set model.base_channels=64 (repeatable)",
    )
    p.set_defaults(func=run_train)
    accept_underscores(p)

    p = subparsers.add_parser("sample", help="generate images from a multi-modal instruction JSON")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint directory (or a run's output dir)"
    )
    p.add_argument(
        "--instruction", required=True, help="instruction JSON (see mmdata.train.generate)"
    )
    p.add_argument("--output", required=True, help="folder for the PNGs")
    _sampling_args(p)
    p.add_argument("--num-images", type=int, help="override num_images of every instruction")
    p.set_defaults(func=run_sample)
    accept_underscores(p)

    p = subparsers.add_parser(
        "evaluate", help="score a checkpoint on held-out shards (JSON + grid)"
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--shards", nargs="+", required=True, help="held-out dataset roots or shard URLs"
    )
    p.add_argument("--output", required=True)
    p.add_argument("--num-samples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tasks", nargs="*", default=[], help="only these tasks (default: all)")
    _sampling_args(p)
    p.set_defaults(func=run_evaluate)
    accept_underscores(p)


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--text-scale", type=float, default=3.0, help="text guidance scale")
    p.add_argument("--context-scale", type=float, default=1.5, help="context guidance scale")
    p.add_argument("--weights", choices=("ema", "model"), default="ema")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


# `s3://bucket/run`, `gs://...`, `file:///...`: pathlib would make a local folder `s3:/bucket/run`
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _check_local_output(path: Any, what: str = "--output") -> None:
    """A ValueError (exit 2) for an output that is empty or a URL: train, sample and evaluate write
    with pathlib, into local (or mounted) folders only."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{what} is empty; give the folder to write to")
    if _URL_SCHEME.match(path):
        raise ValueError(
            f"{what} {path}: outputs must be local folders (object-store URLs are not supported); "
            "write locally and copy the folder, or use a mounted bucket's path"
        )


def _interrupted(command: str, detail: str = "") -> int:
    """Ctrl-C: one line on stderr (from the main process only), no traceback; exit 130."""
    if os.environ.get("RANK", "0") in ("", "0"):  # accelerate launch: every process gets SIGINT
        print(f"\nmmdata {command}: interrupted{detail}", file=sys.stderr)
    return 130


def run_train(args: argparse.Namespace, beam_args: list[str]) -> int:
    output: dict[str, str] = {}  # the run's folder, once known
    try:
        return _run_train(args, output)
    except KeyboardInterrupt:
        from mmdata.train.checkpoint import latest_checkpoint

        folder = output.get("dir")
        last = None
        if folder:
            try:
                last = latest_checkpoint(folder)
            except (OSError, ValueError):
                last = None
        if last is not None:
            detail = (
                f"; the run can be resumed from its last checkpoint ({last}) with the same "
                "command and --resume"
            )
        elif folder:
            detail = f"; no checkpoint was written to {folder} yet"
        else:
            detail = ""
        return _interrupted("train", detail)


def _run_train(args: argparse.Namespace, output: dict[str, str]) -> int:
    from mmdata.train.config import TrainConfig, apply_overrides
    from mmdata.train.data import resolve_shards
    from mmdata.train.loop import train

    # the file is validated with the flags applied: lora.yaml gets its init_from from --init-from
    data = TrainConfig.read_file(args.config) if args.config else {}
    mixture = None
    if args.mixture is not None:
        try:
            mixture = json.loads(args.mixture)
        except ValueError as e:
            raise ValueError(
                f"--mixture {args.mixture!r} is not JSON ({e}); e.g. '{{\"txt2img\": 0.5}}'"
            ) from None
    flags = {
        "data.shards": args.shards,
        "output_dir": args.output,
        "stage": args.stage,
        "init_from": args.init_from,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "data.mixture": mixture,
        "resume": True if args.resume else None,
    }
    apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None])
    apply_overrides(data, args.set)
    cfg = TrainConfig.from_dict(data)
    _check_local_output(cfg.output_dir, "--output" if args.output is not None else "output_dir")
    output["dir"] = cfg.output_dir
    if not cfg.data.shards:
        raise ValueError("no shards: pass --shards or set data.shards in the config")
    resolve_shards(cfg.data.shards)  # a wrong --shards fails here, before the model is built
    result = train(cfg)
    if result.main_process:  # once per run, not once per process
        log.info("finished at step %d; checkpoint %s", result.step, result.checkpoint)
    return 0


def _check_sampling_args(args: argparse.Namespace) -> None:
    """The checks of EvalConfig.validate for the sampling flags `sample` shares with `evaluate`."""
    from mmdata.train.evaluate import check_sampling_flags

    check_sampling_flags(args, (("steps", 1), ("seed", 0)))


def run_sample(args: argparse.Namespace, beam_args: list[str]) -> int:
    try:
        return _run_sample(args)
    except KeyboardInterrupt:
        return _interrupted("sample", f"; images written so far are in {args.output}")


def _run_sample(args: argparse.Namespace) -> int:
    from mmdata.train.checkpoint import load_model, read_config, resolve_checkpoint
    from mmdata.train.evaluate import pick_device
    from mmdata.train.generate import check_context_images, generate, read_instructions
    from mmdata.train.text import TextEncoder

    if args.num_images is not None and args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    _check_sampling_args(args)
    _check_local_output(args.output)
    check_output_folder(args.output)  # an --output under a file fails before the model loads
    instructions = read_instructions(args.instruction)  # a bad file fails before the model loads
    device = pick_device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint)
    saved = read_config(checkpoint)
    for n, ins in enumerate(instructions):  # an unusable context image fails before the model loads
        try:
            check_context_images(ins, saved.model.image_size, saved.data.max_context)
        except ValueError as e:
            raise ValueError(f"{args.instruction} item {n}: {e}") from None
    model, cfg = load_model(checkpoint, args.weights)
    model.to(device)
    encoder = TextEncoder(cfg.text, device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for i, ins in enumerate(instructions):
        if args.num_images is not None:
            ins.num_images = args.num_images
        ins.seed = ins.seed + args.seed
        images = generate(
            model, cfg, encoder, ins, device, args.steps, args.text_scale, args.context_scale
        )
        for j, img in enumerate(images):
            img.save(out / f"{i:04d}_{j:02d}.png")
        log.info("instruction %d: %d image(s) -> %s", i, len(images), out)
    return 0


def run_evaluate(args: argparse.Namespace, beam_args: list[str]) -> int:
    try:
        return _run_evaluate(args)
    except KeyboardInterrupt:
        return _interrupted("evaluate", "; no figures were written")


def _run_evaluate(args: argparse.Namespace) -> int:
    from mmdata.train.checkpoint import resolve_checkpoint
    from mmdata.train.data import resolve_shards
    from mmdata.train.evaluate import EvalConfig, evaluate

    ec = EvalConfig(
        checkpoint=args.checkpoint,
        shards=args.shards,
        output=args.output,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        steps=args.steps,
        text_scale=args.text_scale,
        context_scale=args.context_scale,
        weights=args.weights,
        seed=args.seed,
        device=args.device,
        tasks=args.tasks,
    )
    ec.validate()  # bad arguments, then a wrong --shards or --output, fail before the model loads
    _check_local_output(args.output)
    check_output_folder(args.output)
    resolve_shards(args.shards)
    ec.checkpoint = str(resolve_checkpoint(args.checkpoint))
    figures = evaluate(ec)
    print(json.dumps({k: figures[k] for k in ("num_samples", "fid", "per_task")}, indent=2))
    return 0
