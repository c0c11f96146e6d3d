"""`make bench-models`: images/s per model backend at a few batch sizes, beside a bare call of the same model
on the same tensors in the same run.

* bare: the model alone on its input tensors made beforehand from the handler's prepared items (torch forward /
  onnxruntime run / blur + cv2.Canny on the grey image).
* handler: `ModelHandler.run_inference` on the decoded images (what RunInference calls per batch:
  conversion, resizing, normalisation, grouping, the model, postprocessing, rejects).
* ratio = handler / bare (1.0 = no framework overhead; the preprocessing share is printed beside it). The bare
  and handler samples alternate, so a slow spell of a shared machine falls on both.
* pipeline: one Beam `RunInference` job (DirectRunner) per backend, timed against the same job without the
  RunInference step, so Beam start-up is not counted.

Images: the bundled corpus emoji (128 px RGBA). `--quality` instead prints the behaviour figures on the whole
corpus (mask IoU vs alpha, style-set grouping, feature recall@k). `--device cuda` runs on a GPU; `--clip-b32`
adds a random-initialised CLIP ViT-B/32 (throughput only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np

from mmdata.models.base import BatchedModelHandler
from mmdata.runner import LocalDirectRunner

MAX_PIPELINE_IMAGES = 128
CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus"


def corpus_emoji(limit: int | None = None) -> list[tuple[np.ndarray, dict]]:
    from PIL import Image

    rows = [json.loads(x) for x in (CORPUS / "index.jsonl").read_text().splitlines() if x.strip()]
    rows = sorted(
        (r for r in rows if r["group"] == "emoji"), key=lambda r: (r["subject"], r["style"])
    )
    return [(np.asarray(Image.open(CORPUS / r["path"])), r) for r in rows[:limit]]


MIN_SAMPLE_S = 0.2


def _timed(*fns: Callable[[], Any], repeat: int, min_sample: float = MIN_SAMPLE_S) -> list[float]:
    """Best time of one call of each `fn` over `repeat` samples, after one warm-up call each.

    A sample runs `fn` as many times as fill about `min_sample` seconds (sized from the warm-up, as
    `timeit` does), so cheap models are not timed from a single call of a few milliseconds. The
    samples of several functions are interleaved (a, b, a, b, ...), so a slow spell of a shared
    machine falls on all of them rather than on whichever ran last.
    """
    loops = []
    for fn in fns:
        t = time.perf_counter()
        fn()
        loops.append(max(1, math.ceil(min_sample / max(time.perf_counter() - t, 1e-6))))
    best = [math.inf] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            for _ in range(loops[i]):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t) / loops[i])
    return best


def _batches(xs: list, b: int) -> list[list]:
    return [xs[i : i + b] for i in range(0, len(xs), b)]


def bare_call(name: str, handler: BatchedModelHandler, model: Any) -> Callable[[list], Any]:
    """The model alone on a batch of prepared items (`handler.prepare_for` outputs)."""
    import torch

    if name in ("hed", "efficientnet-lite0"):

        def run(items: list) -> Any:
            xs = [it[0] if isinstance(it, tuple) else it for it in items]
            dev = next(model.parameters()).device
            with torch.inference_mode():
                y = model(torch.from_numpy(np.stack(xs)).to(dev))
                if dev.type == "cuda":
                    torch.cuda.synchronize()
            return y

        return run
    if name == "clip":

        def run(items: list) -> Any:
            with torch.inference_mode():
                y = model.model.encode_image(torch.stack(items).to(model.device))
                if model.device.type == "cuda":
                    torch.cuda.synchronize()
            return y

        return run
    if name == "u2netp":
        inp = model.get_inputs()[0].name
        return lambda items: [model.run(None, {inp: x[None]}) for _, x, _ in items]
    if name == "style-vector":
        inp = model.get_inputs()[0].name
        return lambda items: [model.run(None, {inp: x[None]}) for x in items]
    if name == "style-transfer":
        p_in = model.predict.get_inputs()[0].name
        t_in = [i.name for i in model.transform.get_inputs()]

        def run(items: list) -> Any:
            out = []
            for x, _, _, style, _ in items:
                vec = model.predict.run(None, {p_in: style[None]})[0]
                out.append(model.transform.run(None, {t_in[0]: x[None], t_in[1]: vec}))
            return out

        return run
    if name == "canny":
        from mmdata.models.canny import canny_edges

        return lambda items: [canny_edges(x, model) for x in items]
    if name == "minilm":
        return lambda items: model.encode(items, batch_size=len(items), show_progress_bar=False)
    raise KeyError(name)


def model_tensors(name: str, prepared: list) -> list:
    """The model's own input tensors, made from the handler's prepared items outside the timing (the
    style predictor's items are uint8 pixels; the handler converts them into a reused float buffer)."""
    if name == "style-vector":
        from mmdata.models.style import to_float

        return [to_float(x) for x in prepared]
    return prepared


def make_backends(
    args: argparse.Namespace, tmp: Path
) -> dict[str, tuple[BatchedModelHandler, list]]:
    """{name: (handler, elements)} for every backend the bench runs."""
    from mmdata.models.canny import CannyEdgeHandler
    from mmdata.models.features import EfficientNetImageEmbedder, MiniLMTextEmbedder
    from mmdata.models.hed import HEDEdgeHandler
    from mmdata.models.style import StyleTransferHandler, StyleVectorHandler
    from mmdata.models.u2net import U2NetMaskHandler

    dev = {"device": args.device}
    ort = {"device": args.device, "threads": args.threads}
    emoji = corpus_emoji(args.images)
    imgs = [img for img, _ in emoji]
    texts = [r["styled_caption"] for _, r in emoji]
    backends: dict[str, tuple[BatchedModelHandler, list]] = {
        "canny": (CannyEdgeHandler(), imgs),
        "hed": (HEDEdgeHandler(**dev), imgs),
        "u2netp": (U2NetMaskHandler(use_alpha=False, **ort), imgs),
        "efficientnet-lite0": (EfficientNetImageEmbedder(**dev), imgs),
        "minilm": (MiniLMTextEmbedder(**dev), texts),
        "style-vector": (StyleVectorHandler(**ort), imgs),
        "style-transfer": (StyleTransferHandler(**ort), list(zip(imgs, imgs[::-1], strict=True))),
    }
    if args.clip_b32:
        import open_clip
        import torch

        from mmdata.models.clip import ClipImageEmbedder, save_open_clip_dir

        torch.manual_seed(0)
        cfg = open_clip.get_model_config("ViT-B-32")
        folder = save_open_clip_dir(open_clip.CLIP(**cfg), cfg, tmp / "clip-b32")
        backends["clip"] = (ClipImageEmbedder(weights_path=str(folder), **dev), imgs)
    only = set(args.only or backends)
    return {k: v for k, v in backends.items() if k in only}


def bench_one(
    name: str, handler: BatchedModelHandler, elements: list, sizes: list[int], repeat: int
) -> list[dict]:
    model = handler.load_model()
    bare = bare_call(name, handler, model)
    rows = []
    for b in sizes:
        if b > len(elements):
            continue
        n = len(elements) // b * b
        chunks = _batches(elements[:n], b)

        def prep(chunks: list = chunks) -> list:
            return [[handler.prepare_for(x, model) for x in c] for c in chunks]

        def full(chunks: list = chunks) -> list:
            return [list(handler.run_inference(c, model)) for c in chunks]

        tensors = [model_tensors(name, p) for p in prep()]
        (t_prep,) = _timed(prep, repeat=1)
        t_bare, t_handler = _timed(
            lambda tensors=tensors: [bare(t) for t in tensors], full, repeat=repeat
        )
        rows.append(
            {
                "backend": name,
                "batch": b,
                "images": n,
                "bare_ips": n / t_bare,
                "handler_ips": n / t_handler,
                "ratio": t_bare / t_handler,
                "prep_share": t_prep / t_handler,
            }
        )
    return rows


class _LoadElement(beam.DoFn):
    """Index -> element, from a pickle file written by the bench (read once per worker)."""

    def __init__(self, path: str):
        self.path = path

    def setup(self) -> None:
        with open(self.path, "rb") as f:
            self.elements = pickle.load(f)  # noqa: S301 - the bench's own temporary file

    def process(self, i: int):  # noqa: ANN201
        yield self.elements[i]


def bench_pipeline(
    handler: BatchedModelHandler, elements: list, repeat: int, handler_ips: float, seconds: float
) -> dict:
    """Images/s of a Beam RunInference job, net of the same job without RunInference. The elements are
    repeated so the model work takes about `seconds` (else Beam start-up noise swamps cheap models)."""
    reps = max(1, min(round(seconds * handler_ips), MAX_PIPELINE_IMAGES) // len(elements))
    elements = elements * reps
    from apache_beam.ml.inference.base import RunInference

    # The elements reach the workers through a file, not the pipeline graph: Beam pickles and
    # compresses a Create's values into the graph, which took longer than the model on 128 images.
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as f:
        pickle.dump(elements, f)
        path = f.name

    def job(with_model: bool) -> float:
        t = time.perf_counter()
        with beam.Pipeline(runner=LocalDirectRunner()) as p:
            pc = p | beam.Create(range(len(elements))) | beam.ParDo(_LoadElement(path))
            if with_model:
                pc = pc | RunInference(handler)
            _ = pc | beam.combiners.Count.Globally()
        return time.perf_counter() - t

    base = min(job(False) for _ in range(repeat))
    full = min(job(True) for _ in range(repeat))
    Path(path).unlink(missing_ok=True)
    return {
        "images": len(elements),
        # below the noise of two Beam jobs the figure means nothing: NaN, printed as n/a
        "pipeline_ips": len(elements) / (full - base) if full - base > 0.05 * base else math.nan,
        "pipeline_s": full,
        "empty_s": base,
    }


# ---------------------------------------------------------------------------------------------------------
# Quality figures on the whole bundled corpus


def quality(args: argparse.Namespace) -> dict:
    from mmdata.models.features import EfficientNetImageEmbedder
    from mmdata.models.style import StyleVectorHandler
    from mmdata.models.u2net import U2NetMaskHandler

    emoji = corpus_emoji(args.images)
    imgs = [img for img, _ in emoji]
    keys = [(r["subject"], r["style"]) for _, r in emoji]
    out: dict[str, Any] = {"images": len(imgs)}

    def run(handler: BatchedModelHandler) -> list:
        model = handler.load_model()
        res = []
        for c in _batches(imgs, 16):
            res += [r.inference for r in handler.run_inference(c, model)]
        return res

    masks = run(U2NetMaskHandler(use_alpha=False, threads=args.threads))
    ious = [
        float(
            ((m > 0.5) & (a[:, :, 3] > 127)).sum() / max(1, ((m > 0.5) | (a[:, :, 3] > 127)).sum())
        )
        for m, a in zip(masks, imgs, strict=True)
    ]
    out["mask_iou_mean"] = float(np.mean(ious))
    out["mask_iou_median"] = float(np.median(ious))
    out["mask_iou_by_set"] = {
        s: float(np.mean([i for i, k in zip(ious, keys, strict=True) if k[1] == s]))
        for s in sorted({k[1] for k in keys})
    }

    subjects, sets = sorted({k[0] for k in keys}), sorted({k[1] for k in keys})
    for suffix, luminance in (("", False), ("_luminance", True)):
        handler = StyleVectorHandler(threads=args.threads, luminance=luminance)
        vecs = dict(zip(keys, run(handler), strict=True))
        per_set = {}
        for s in sets:
            wins = total = 0
            for a, b, t in itertools.product(subjects, subjects, sets):
                if a == b or t == s or (a, t) not in vecs or (b, s) not in vecs:
                    continue
                if (a, s) not in vecs:
                    continue
                wins += bool(
                    np.linalg.norm(vecs[a, s] - vecs[b, s])
                    < np.linalg.norm(vecs[a, s] - vecs[a, t])
                )
                total += 1
            per_set[s] = wins / max(1, total)
        out[f"style_same_set_closer{suffix}"] = float(np.mean(list(per_set.values())))
        out[f"style_same_set_closer{suffix}_by_set"] = per_set

    feats = np.stack(run(EfficientNetImageEmbedder()))
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1)
    labels = [k[0] for k in keys]
    for k in (1, 5, 10):
        hits = [any(labels[j] == labels[i] for j in order[i, :k]) for i in range(len(labels))]
        out[f"features_recall@{k}"] = float(np.mean(hits))
    n_same = len(labels) / len(subjects) - 1
    out["features_chance@1"] = n_same / (len(labels) - 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="corpus emoji per backend")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--repeat", type=int, default=3, help="timing samples (best kept)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch / onnxruntime intra-op threads"
    )
    parser.add_argument("--only", nargs="*", help="backends to run (default: all)")
    parser.add_argument("--clip-b32", action="store_true", help="add random-init CLIP ViT-B/32")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the RunInference jobs")
    parser.add_argument(
        "--pipeline-seconds", type=float, default=2.0, help="model work per RunInference job"
    )
    parser.add_argument(
        "--quality", action="store_true", help="print corpus quality figures instead"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.quality:
        res = quality(args)
        print(json.dumps(res, indent=2))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
        return 0
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    rows: list[dict] = []
    print(f"device={args.device} threads={args.threads} images/backend={args.images}")
    print(
        f"{'backend':20} {'batch':>5} {'bare img/s':>11} {'handler img/s':>14} {'ratio':>6} {'prep':>6}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, (handler, elements) in make_backends(args, Path(tmp)).items():
            for r in bench_one(name, handler, elements, sizes, args.repeat):
                rows.append(r)
                print(
                    f"{name:20} {r['batch']:>5} {r['bare_ips']:>11.1f} {r['handler_ips']:>14.1f} "
                    f"{r['ratio']:>6.2f} {r['prep_share']:>6.0%}",
                    flush=True,
                )
            if not args.no_pipeline:
                best = max(r["handler_ips"] for r in rows if r["backend"] == name)
                pr = bench_pipeline(handler, elements, args.repeat, best, args.pipeline_seconds)
                pr.update(backend=name, batch="beam")
                rows.append(pr)
                ips = pr["pipeline_ips"]
                ips_s = "n/a" if math.isnan(ips) else f"{ips:.1f}"
                print(
                    f"{name:20} {'beam':>5} {'':>11} {ips_s:>14}   "
                    f"(RunInference job on {pr['images']} images {pr['pipeline_s']:.1f}s, "
                    f"same job without it {pr['empty_s']:.1f}s)",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
