"""`make bench-ingest`: images/s of the Beam ingest job (folder -> checked pair shards) against a plain loop.

The corpus: the bundled sample corpus, augmented (8 flips/rotations, more if needed) and resized to web-like
sizes (JPEG, long side --size px), a few thousand images. The baseline is a plain single-process Python loop
doing the same work (read image + sidecar, `decode_image` + `clean_caption`, write with `webdataset.TarWriter`)
measured in the same run. Beam timings are wall-clock of the whole job (graph construction, start-up, manifest).
Each configuration runs `--repeat` times and keeps its best time (noise on a shared machine only adds).
Each run's CPU time (this process and Beam's worker processes) is printed too: a job that needs C
CPU-seconds cannot finish in less than C / cores seconds, which bounds the 2-worker speed-up a machine
can show whatever the scheduling.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image, ImageOps

from mmdata.beam_worker import ZYGOTE_ENV, close_zygote
from mmdata.config import IngestJobConfig, ShardConfig
from mmdata.core.caption import clean_caption
from mmdata.core.image import decode_image
from mmdata.sample import sample_corpus_dir
from pipelines import ingest  # imported here so Beam's import time is not counted as ingest time

# The workers log at WARNING, as this process does: their INFO summary lines are not figures.
TWO_WORKERS = [
    "--direct_num_workers=2",
    "--direct_running_mode=multi_processing",
    "--default_sdk_harness_log_level=WARNING",
]


def build_bench_corpus(out: Path, n: int, size: int) -> int:
    """Write n augmented JPEG + .txt pairs under out; returns how many were written."""
    src = sorted(p for p in sample_corpus_dir().rglob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    ops = [
        lambda im: im,
        ImageOps.mirror,
        ImageOps.flip,
        lambda im: im.rotate(90, expand=True),
        lambda im: im.rotate(180),
        lambda im: im.rotate(270, expand=True),
        lambda im: ImageOps.mirror(im.rotate(90, expand=True)),
        lambda im: ImageOps.flip(im.rotate(90, expand=True)),
    ]
    written = 0
    for rep in range(n // (len(src) * len(ops)) + 1):
        for i, path in enumerate(src):
            for j, op in enumerate(ops):
                if written >= n:
                    return written
                im = Image.open(path)
                if im.mode in ("RGBA", "LA", "P"):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                im = op(im.convert("RGB"))
                scale = size / max(im.size)
                im = im.resize(
                    (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                    Image.BICUBIC,
                )
                if rep:
                    im = ImageOps.posterize(im, 8 - rep % 4)
                stem = out / f"{rep:02d}_{i:04d}_{j}"
                im.save(f"{stem}.jpg", quality=90)
                meta = path.with_suffix(".json")
                caption = json.loads(meta.read_text())["caption"] if meta.exists() else path.stem
                Path(f"{stem}.txt").write_text(caption)
                written += 1
    return written


def _plain_sample(path: Path, full_jpeg_decode: bool) -> dict[str, Any] | None:
    """The plain loop's work for one image: read image + caption, decode, clean, the sample's members."""
    data = path.read_bytes()
    caption = path.with_suffix(".txt").read_bytes()
    img = decode_image(data, reduced_jpeg_check=not full_jpeg_decode)
    cap = clean_caption(caption)
    if not hasattr(img, "data") or not isinstance(cap, str):
        return None
    return {
        "jpg": img.data,
        "txt": cap.encode(),
        "json": json.dumps({"caption": cap, "width": img.width, "height": img.height}).encode(),
    }


def plain_loop(corpus: Path, out: Path, maxcount: int, full_jpeg_decode: bool = False) -> int:
    """The baseline: one process, same decode and caption rules, TarWriter shards."""
    out.mkdir(parents=True, exist_ok=True)
    images = sorted(corpus.glob("*.jpg"))
    kept = 0
    shard, tw = -1, None
    for path in images:
        sample = _plain_sample(path, full_jpeg_decode)
        if sample is None:
            continue
        if kept % maxcount == 0:
            if tw:
                tw.close()
            shard += 1
            tw = wds.TarWriter(str(out / f"{shard:05d}.tar"), encoder=False, mtime=0)
        tw.write({"__key__": f"{kept:09d}", **sample})
        kept += 1
    if tw:
        tw.close()
    return kept


def _floor_shard(task: tuple[int, list[str], str, bool]) -> int:
    """One shard of the Beam floor job: the plain loop's work over one chunk of the sorted images."""
    index, images, out, full_jpeg_decode = task
    kept = 0
    with wds.TarWriter(f"{out}/{index:05d}.tar", encoder=False, mtime=0) as tw:
        for name in images:
            sample = _plain_sample(Path(name), full_jpeg_decode)
            if sample is not None:
                tw.write({"__key__": f"{index:05d}{kept:04d}", **sample})
                kept += 1
    return kept


def beam_floor(
    corpus: Path, out: Path, maxcount: int, beam_args: list[str], full_jpeg_decode: bool = False
) -> int:
    """What Beam itself costs here: one Beam job doing exactly the plain loop's work, a step per chunk
    of `maxcount` images (one shard each), with none of mmdata's contract (no global hash order and
    shard plan, duplicate keys, rejects, counts, sidecars, content digests, manifest). mmdata's job
    against this floor is the cost of that contract; the floor against the plain loop is Beam's."""
    import apache_beam as beam

    from mmdata.runner import pipeline_options

    out.mkdir(parents=True, exist_ok=True)
    images = [str(p) for p in sorted(corpus.glob("*.jpg"))]
    chunks = [
        (i, images[start : start + maxcount], str(out), full_jpeg_decode)
        for i, start in enumerate(range(0, len(images), maxcount))
    ]
    kept_file = out / "kept.txt"
    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        _ = (
            p
            | beam.Create(chunks)
            | beam.Reshuffle()
            | beam.Map(_floor_shard)
            | beam.CombineGlobally(sum)
            | beam.Map(lambda n: kept_file.write_text(str(n)))
        )
    return int(kept_file.read_text())


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (Beam's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def beam_ingest(
    corpus: Path, out: Path, maxcount: int, beam_args: list[str], full_jpeg_decode: bool = False
) -> int:
    cfg = IngestJobConfig(input=str(corpus), output=str(out), shards=ShardConfig(maxcount=maxcount))
    cfg.ingest.full_jpeg_decode = full_jpeg_decode
    try:
        ingest.run(cfg, beam_args, overwrite=True)
    finally:
        # Each timed multi_processing job starts its own worker zygote, as a `mmdata ingest` run does
        # (it would otherwise serve the next job of this process warm), and its CPU time is counted.
        close_zygote()
    return json.loads((out / "manifest.json").read_text())["totals"]["samples"]


def _cold_workers(fn: Any, *args: Any) -> Any:
    """`fn` with each worker process started by Beam itself (importing everything), not forked from
    the warm zygote: what `MMDATA_WORKER_ZYGOTE=0` does, and what every run did before."""
    before = os.environ.get(ZYGOTE_ENV)
    os.environ[ZYGOTE_ENV] = "0"
    try:
        return fn(*args)
    finally:
        if before is None:
            os.environ.pop(ZYGOTE_ENV, None)
        else:
            os.environ[ZYGOTE_ENV] = before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=3000, help="images in the bench corpus")
    ap.add_argument(
        "--n-small", type=int, default=100, help="images in the small corpus (fixed-cost estimate)"
    )
    ap.add_argument("--size", type=int, default=384, help="long side of the bench images (px)")
    ap.add_argument("--maxcount", type=int, default=500)
    ap.add_argument(
        "--full-jpeg-decode",
        action="store_true",
        help="check JPEGs by a full-size decode in both the plain loop and the job "
        "(ingest.full_jpeg_decode; the default decodes them at 1/8 DCT scale)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs per configuration; the best (shortest) is kept, as timing noise only adds",
    )
    ap.add_argument(
        "--workdir", default=None, help="keep the corpus and outputs here (default: a temp dir)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mmdata-bench-"))
    corpus = work / "corpus"
    if not corpus.exists() or len(list(corpus.glob("*.jpg"))) != args.n:
        shutil.rmtree(corpus, ignore_errors=True)
        build_bench_corpus(corpus, args.n, args.size)
    n = len(list(corpus.glob("*.jpg")))
    mb = sum(p.stat().st_size for p in corpus.glob("*.jpg")) / 1e6
    check = "full-size decode" if args.full_jpeg_decode else "1/8-scale decode"
    print(
        f"bench-ingest: {n} JPEG images (long side {args.size}px, {mb:.1f} MB, {check}) in {corpus}"
    )

    runs = [
        (
            "plain loop (1 process, TarWriter)",
            lambda c, o: plain_loop(c, o, args.maxcount, args.full_jpeg_decode),
        ),
        (
            "beam floor: 1 Beam step per shard, 1 worker",
            lambda c, o: beam_floor(
                c,
                o,
                args.maxcount,
                ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
                args.full_jpeg_decode,
            ),
        ),
        (
            "beam DirectRunner, 1 worker",
            lambda c, o: beam_ingest(
                c,
                o,
                args.maxcount,
                ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
                args.full_jpeg_decode,
            ),
        ),
        (
            "beam DirectRunner, 2 workers (multi_processing)",
            lambda c, o: beam_ingest(
                c,
                o,
                args.maxcount,
                TWO_WORKERS,
                args.full_jpeg_decode,
            ),
        ),
        (
            "beam DirectRunner, 2 workers, cold start",
            lambda c, o: _cold_workers(
                beam_ingest,
                c,
                o,
                args.maxcount,
                TWO_WORKERS,
                args.full_jpeg_decode,
            ),
        ),
    ]
    # The same runs on a small corpus give each runner's fixed cost (start-up, graph, manifest), so the
    # per-image cost can be told apart from it: per_image = (t_big - t_small) / (n_big - n_small).
    small = work / "corpus_small"
    if not small.exists() or len(list(small.glob("*.jpg"))) != args.n_small:
        shutil.rmtree(small, ignore_errors=True)
        build_bench_corpus(small, args.n_small, args.size)
    rates, rows, cpus = [], [], []
    for i, (name, fn) in enumerate(runs):
        times: dict[str, tuple[int, float, float]] = {}
        for _ in range(max(1, args.repeat)):
            for label, c in (("small", small), ("full", corpus)):
                out = work / f"out{i}-{label}"
                shutil.rmtree(out, ignore_errors=True)
                c0, t0 = _cpu_seconds(), time.perf_counter()
                kept = fn(c, out)
                dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
                if label not in times or dt < times[label][1]:
                    times[label] = (kept, dt, cpu)
        kept, dt, cpu = times["full"]
        per_image = (dt - times["small"][1]) / max(1, kept - times["small"][0])
        fixed = max(0.0, dt - per_image * kept)
        rates.append(kept / dt)
        cpus.append(cpu)
        rows.append((name, kept, dt, per_image, fixed))
        print(
            f"  {name:<50} {kept:>6} kept in {dt:6.2f} s = {kept / dt:8.1f} images/s  "
            f"({per_image * 1e3:.2f} ms/image + {fixed:.1f} s fixed; CPU {cpu:.1f} s)",
            flush=True,
        )
    base, floor, one, two, cold = rates
    cores = os.cpu_count() or 1
    print(f"ratio beam 1 worker / plain loop:  {one / base:.2f}  (aim >= 0.8)")
    print(
        f"ratio beam floor / plain loop:     {floor / base:.2f}  (Beam's own cost here: the same work "
        f"as the plain loop in one Beam step per shard)"
    )
    print(
        f"ratio beam 1 worker / beam floor:  {one / floor:.2f}  (the cost of mmdata's contract: global "
        "hash order, duplicate keys, rejects, counts, sidecars, digests, manifest)"
    )
    print(f"ratio beam 2 workers / 1 worker:   {two / one:.2f}  (aim > 1.6)")
    print(
        f"ratio 2 workers / 2 workers started cold: {two / cold:.2f}  (workers forked from a warm "
        f"zygote vs each importing Beam; {rows[4][4] - rows[3][4]:+.1f} s fixed cost)"
    )
    # Whatever the scheduling, a job needing C CPU-seconds takes at least C / cores seconds here.
    bound = rows[2][2] / (cpus[3] / cores)
    print(
        f"CPU: 2 workers used {cpus[3] / cpus[2]:.2f}x the CPU time of 1 worker (worker processes "
        f"included); with {cores} cores the 2-worker speed-up cannot exceed {bound:.2f} here"
    )
    per_base, per_floor, per_one, per_two = (r[3] for r in rows[:4])
    print(
        f"per-image cost only (fixed costs removed): 1 worker / plain {per_base / per_one:.2f}, "
        f"floor / plain {per_base / per_floor:.2f}, 2 workers / 1 worker {per_one / per_two:.2f}"
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
