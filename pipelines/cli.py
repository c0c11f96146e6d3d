"""`mmdata demo`, `mmdata ingest` and `mmdata inspect`."""

from __future__ import annotations

import argparse
import logging

from mmdata.config import DemoConfig, IngestJobConfig, add_config_flags, config_from_args
from mmdata.flags import accept_underscores
from mmdata.runner import redact_args, summarize

log = logging.getLogger("mmdata")


def _demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines import demo

    cfg = config_from_args(DemoConfig, args)
    log.info(
        "demo: input=%s output=%s runner args=%s",
        cfg.input or "<bundled sample corpus>",
        cfg.output,
        redact_args(beam_args) or "[DirectRunner]",
    )
    demo.run(cfg, beam_args, overwrite=args.overwrite)
    print(summarize(cfg.output))
    print(f"\nOutput written to: {cfg.output}\nLook at it with: mmdata inspect {cfg.output}")
    return 0


def _ingest(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines import ingest

    cfg = config_from_args(IngestJobConfig, args)
    ingest.run(cfg, beam_args, overwrite=args.overwrite)
    print(summarize(cfg.output))
    print(f"\nOutput written to: {cfg.output}")
    return 0


def _inspect(args: argparse.Namespace, beam_args: list[str]) -> int:
    from mmdata.inspect import write_report
    from mmdata.io.paths import use_options

    use_options(beam_args)  # an object store's endpoint and keys, for a dataset there
    out = write_report(args.dataset, args.out, max_samples=args.max_samples, verify=args.verify)
    print(f"Report written to: {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job (ingest -> quality -> txt2img -> shards) on the sample corpus",
        description="Ingest the bundled sample corpus (or --input), filter by technical quality, build "
        "text-to-image instruction samples and write WebDataset shards, manifest and rejects.",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="rewrite complete shards instead of skipping them"
    )
    add_config_flags(p, DemoConfig)
    p.set_defaults(func=_demo, accepts_beam_args=True)

    p = sub.add_parser(
        "ingest",
        help="read a folder / manifest / WebDataset source into checked pair shards",
        description="Read image-text pairs from a folder of images with sidecar captions, a manifest "
        "or img2dataset-style WebDataset shards; decode and check every image and caption; write the "
        "kept pairs as WebDataset shards (+ Parquet sidecars), the rejects with their reasons, and "
        "manifest.json. Beam pipeline options (--runner, --direct_num_workers, ...) pass through.",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="rewrite complete shards instead of skipping them"
    )
    add_config_flags(p, IngestJobConfig)
    p.set_defaults(func=_ingest, accepts_beam_args=True)

    p = sub.add_parser(
        "inspect",
        help="write a self-contained HTML page showing a dataset",
        description="Write a self-contained HTML page of a dataset (local folder or object-store "
        "prefix): per-stage counts, reject reasons, task mixture and sample thumbnails. Beam "
        "filesystem options (--s3_endpoint_url, ...) pass through for datasets in object stores.",
    )
    p.add_argument("dataset", help="dataset folder or gs:// / s3:// prefix (with manifest.json)")
    p.add_argument("--out", default=None, help="HTML file (default: <dataset>/inspect.html)")
    p.add_argument(
        "--max-samples",
        type=int,
        default=48,
        help="most samples shown (taken from the first shards in order)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="hash every shard against the manifest's sha256 (reads the whole dataset; by default "
        "only the shards the samples shown come from are hashed, the others checked by size)",
    )
    p.set_defaults(func=_inspect, accepts_beam_args=True)
    accept_underscores(p)  # --max_samples too, as before
