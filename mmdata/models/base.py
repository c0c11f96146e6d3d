"""What every model backend shares: the input contract, rejects, devices and the batched handler.

Input contract (all image backends): an element is a decoded image as a **numpy uint8 array, HxWx3 (RGB) or
HxWx4 (RGBA)**. Other inputs are converted, not crashed on: HxW / HxWx1 grey, HxWx2 grey+alpha, bool,
uint16 (either byte order; scaled by 1/257), float in [0, 1] (see `FLOAT_SLACK`) and PIL images of any
mode (16-bit and 32-bit integer modes scaled like uint16, mode F like a float array, so a PIL image and
its numpy array give the same result). Transparent pixels are composited on a background
(white by default) for models that take RGB. An element that cannot be converted, or that a model cannot
take (too small, too large), does not raise: its `PredictionResult.inference` is a `ModelReject` with a
reason and a detail, so a stage can route it to its rejects output (see `is_reject`).

Each backend is a `BatchedModelHandler`: the constructor stores paths and parameters only; `load_model()`
(on the worker) resolves the weights through `mmdata.weights`, checks their sha256, then loads. So a
missing or wrong file fails before any data is processed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import cv2
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from mmdata import weights as weights_registry

log = logging.getLogger(__name__)

ExampleT = TypeVar("ExampleT")
ModelT = TypeVar("ModelT")
ItemT = TypeVar("ItemT")

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

FLOAT_SLACK = 0.25
"""Float images are in [0, 1]. Values up to this far outside (resampling overshoot, colour maths) are
clipped; an image with values further out (a 0-255 or [-1, 1] float image) is a `bad_image` reject."""


@dataclass(frozen=True)
class ModelReject:
    """An element a model could not take. Lives in `PredictionResult.inference` instead of a result.

    Attributes:
        model: the handler's model id (e.g. "hed-bsds500").
        reason: short machine-readable reason (`bad_image`, `too_small`, `too_large`, `empty_text`, ...).
        detail: human-readable detail (sizes, modes).
    """

    model: str
    reason: str
    detail: str


class InputRejected(ValueError):
    """Raised by a handler's `prepare` for an element the model cannot take."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_reject(result: PredictionResult) -> bool:
    """True when a RunInference output is a reject rather than a model output."""
    return isinstance(result.inference, ModelReject)


# ---------------------------------------------------------------------------------------------------------
# Image conversion (pure functions)


def as_uint8_image(image: Any) -> np.ndarray:
    """Convert a decoded image to a uint8 HxWx3 (RGB) or HxWx4 (RGBA) array.

    Args:
        image: numpy array (HxW, HxWx1/2/3/4; uint8, bool, uint16 of either byte order, other ints,
            float in [0, 1]) or a PIL image of any mode. PIL modes I;16* and I go through the uint16
            scaling (I clipped to 0..65535 first), mode F through the float one, so a PIL image gives
            the same result as its numpy array.

    Returns:
        A C-contiguous uint8 array with 3 or 4 channels.

    Raises:
        InputRejected: `bad_image` when the input is not an image or cannot be converted (including a
            float image with values outside [0, 1] by more than `FLOAT_SLACK`).
    """
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    if not isinstance(image, np.ndarray):
        raise InputRejected(
            "bad_image", f"expected a numpy image array, got {type(image).__name__}"
        )
    arr = image
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InputRejected(
            "bad_image", f"expected HxW[xC] with C in 1..4, got shape {image.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputRejected("bad_image", f"empty image, shape {image.shape}")
    arr = _to_uint8(arr)
    channels = arr.shape[2]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif channels == 2:
        arr = np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
    return np.ascontiguousarray(arr)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as an array for `_to_uint8`. 8-bit modes go through PIL's own conversion to RGB(A);
    the wide modes (I;16*, I, F) are read as numbers, since PIL's convert("RGB") clamps them at 255."""
    try:
        if image.mode.startswith("I;16"):
            arr = np.asarray(image)
            if arr.dtype.kind != "u":  # signed 16-bit variants
                arr = np.clip(arr, 0, None).astype(np.uint16)
            return arr
        if image.mode == "I":
            return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
        if image.mode == "F":
            return np.asarray(image)
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        )
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    except (OSError, ValueError, TypeError) as exc:
        raise InputRejected("bad_image", f"cannot convert PIL image: {exc}") from None


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder not in ("=", "|"):  # big-endian (or explicit little-endian) data
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputRejected("bad_image", "image has NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -FLOAT_SLACK or hi > 1.0 + FLOAT_SLACK:
            raise InputRejected(
                "bad_image",
                f"float image values must be in [0, 1] (overshoot up to {FLOAT_SLACK} is clipped), "
                f"got [{lo:.4g}, {hi:.4g}]; divide a 0-255 float image by 255, or pass uint8",
            )
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise InputRejected("bad_image", f"unsupported dtype {arr.dtype}")


def to_rgb(image: np.ndarray, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """Composite an RGBA uint8 image on `background`; RGB passes through. Returns HxWx3 uint8.

    The blend is the rounded integer one, (c * a + bg * (255 - a) + 127) // 255. On white and black
    (the usual backgrounds) OpenCV's saturating uint8 arithmetic gives the same integers about 10x
    faster than numpy: black is round(c * a / 255), white 255 - round((255 - c) * a / 255), and
    x / 255 never falls on .5 for an integer x."""
    if image.shape[2] == 3:
        return image
    bg = tuple(int(c) for c in background)
    if bg in (WHITE, BLACK):
        image = np.ascontiguousarray(image)
        rgb = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
        alpha = cv2.cvtColor(np.ascontiguousarray(image[:, :, 3]), cv2.COLOR_GRAY2RGB)
        if bg == BLACK:
            return cv2.multiply(rgb, alpha, scale=1 / 255)
        return cv2.bitwise_not(cv2.multiply(cv2.bitwise_not(rgb), alpha, scale=1 / 255))
    alpha = image[:, :, 3:4].astype(np.uint16)
    rgb = image[:, :, :3].astype(np.uint16) * alpha
    rgb += np.asarray(background, dtype=np.uint16) * (255 - alpha) + 127
    return (rgb // 255).astype(np.uint8)


def check_size(
    image: np.ndarray, min_side: int = 1, max_pixels: int | None = None
) -> tuple[str, str] | None:
    """Return (reason, detail) when an image is too small or too large for a model, else None."""
    h, w = image.shape[:2]
    if min(h, w) < min_side:
        return "too_small", f"{w}x{h} image; both sides need at least {min_side} px"
    if max_pixels is not None and h * w > max_pixels:
        return "too_large", f"{w}x{h} image has more than {max_pixels} pixels"
    return None


def prepare_image(image: Any, min_side: int = 1, max_pixels: int | None = None) -> np.ndarray:
    """`as_uint8_image` plus `check_size`; raises `InputRejected` with the reason."""
    arr = as_uint8_image(image)
    problem = check_size(arr, min_side, max_pixels)
    if problem:
        raise InputRejected(*problem)
    return arr


def resize_rgb(
    image: np.ndarray, size: tuple[int, int], resample: int = Image.BICUBIC
) -> np.ndarray:
    """Resize an HxWxC uint8 image to (width, height) with PIL."""
    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, resample))


_SUPPORT = {
    Image.NEAREST: 0.5,
    Image.BOX: 0.5,
    Image.BILINEAR: 1.0,
    Image.HAMMING: 1.0,
    Image.BICUBIC: 2.0,
    Image.LANCZOS: 3.0,
}


def resize_crop(
    image: np.ndarray,
    scaled: tuple[int, int],
    box: tuple[int, int, int, int],
    resample: int = Image.BICUBIC,
) -> np.ndarray:
    """The region `box` = (left, top, right, bottom) of `image` resized to (width, height) = `scaled`,
    without building the whole resized image.

    The same as resizing to `scaled` with PIL and then cropping, computed only for the output region
    (`Image.resize(box=...)`), so time and memory follow the output size, not the input's aspect
    ratio. Like PIL's full resize it runs the horizontal pass first, then the vertical one, over the
    rows the vertical pass reads (PIL itself may run a boxed resize vertical-first, which rounds the
    intermediate differently). The box's source coordinates travel as float32 in PIL, so a rare
    pixel can differ from resize-then-crop by 1.
    """
    h, w = image.shape[:2]
    nw, nh = scaled
    left, top, right, bottom = box
    out_w, out_h = right - left, bottom - top
    sx, sy = w / nw, h / nh
    y0, y1 = top * sy, bottom * sy
    # the source rows the vertical pass reads (PIL clamps its kernel at the image edges)
    support = _SUPPORT.get(resample, 3.0) * max(sy, 1.0)
    r0 = max(0, int(y0 - support) - 1)
    r1 = min(h, int(y1 + support) + 2)
    rows = Image.fromarray(np.ascontiguousarray(image[r0:r1]))
    # PIL resamples RGBA / LA premultiplied (once, around the whole resize): do the same around both passes
    premultiplied = {"RGBA": "RGBa", "LA": "La"}.get(rows.mode)
    if premultiplied:
        rows = rows.convert(premultiplied)
    horizontal = rows.resize((out_w, r1 - r0), resample, box=(left * sx, 0, right * sx, r1 - r0))
    out = horizontal.resize((out_w, out_h), resample, box=(0, y0 - r0, out_w, y1 - r0))
    if premultiplied:
        out = out.convert(rows.mode.replace("a", "A"))
    return np.asarray(out)


def resize_short_center_crop(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so the shorter side is `side` (bicubic), then centre-crop to side x side.

    Only the centre region is resampled (see `resize_crop`): a 40000x8 strip costs what a square does.
    """
    h, w = image.shape[:2]
    scale = side / min(h, w)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    if (nw, nh) == (w, h):
        top, left = (h - side) // 2, (w - side) // 2
        return image[top : top + side, left : left + side]
    top, left = (nh - side) // 2, (nw - side) // 2
    return resize_crop(image, (nw, nh), (left, top, left + side, top + side))


# ---------------------------------------------------------------------------------------------------------
# Devices


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. 'cuda') is not available to this process."""


def torch_device(device: str) -> Any:
    """Return a torch.device for 'cpu' / 'cuda' / 'cuda:N', failing clearly when CUDA is absent."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={device!r} requested but torch sees no CUDA GPU; use device='cpu'"
        )
    return dev


def onnx_session(path: str, device: str, threads: int | None = None) -> Any:
    """An onnxruntime session on CPU, or CUDA when device starts with 'cuda' (fails if unavailable)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Busy-waiting worker threads slow everything down on shared or oversubscribed CPUs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeviceUnavailableError(
                f"device={device!r} requested but this onnxruntime has no CUDA provider "
                "(install onnxruntime-gpu) ; use device='cpu'"
            )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(path, opts, providers=providers)


def group_by_shape(items: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Indices of `items` grouped by array shape (so a batch never pads one image with another)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(tuple(item.shape), []).append(i)
    return groups


# ---------------------------------------------------------------------------------------------------------
# The handler


class BatchedModelHandler(
    ModelHandler[ExampleT, PredictionResult, ModelT], Generic[ExampleT, ModelT]
):
    """A Beam ModelHandler that prepares each element, rejects what it cannot take, and runs the rest
    batched through `forward`.

    Subclasses set `weights_name` (a key of `mmdata.weights.REGISTRY`, or None for weight-free models)
    and implement `_load(path)`, `prepare(example)` and `forward(model, items)`.

    Args:
        device: 'cpu' (default) or 'cuda' / 'cuda:N'.
        weights_path: explicit weights file/folder (else the registry's env var, else the package).
        weights_sha256: expected sha256; default: the registry's pinned hash; None skips the check.
        min_batch_size, max_batch_size: passed to Beam's BatchElements.
    """

    weights_name: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        device: str = "cpu",
        weights_path: str | None = None,
        weights_sha256: str | None = weights_registry.PINNED,
        min_batch_size: int = 1,
        max_batch_size: int = 16,
        **kwargs: Any,
    ):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, **kwargs)
        self.device = device
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256

    @property
    def model_id(self) -> str:
        return self.weights_name or type(self).__name__

    def resolve_weights(self) -> Any:
        """The checked weights path (raises a clear `WeightsError` before any data is processed)."""
        if self.weights_name is None:
            return None
        return weights_registry.resolve(self.weights_name, self.weights_path, self.weights_sha256)

    def load_model(self) -> ModelT:
        """Resolve and check the weights, then `_load` them. A library error while reading weights
        that passed the checks (wrong layout, another model's state dict, a truncated unpinned file)
        becomes a `WeightsError` naming the model, the path and how to provide the right weights."""
        path = self.resolve_weights()
        log.info("loading %s from %s on %s", self.model_id, path, self.device)
        try:
            return self._load(path)
        except (weights_registry.WeightsError, DeviceUnavailableError, ImportError):
            raise
        except Exception as exc:
            if self.weights_name is None:
                raise
            raise weights_registry.load_error(self.weights_name, path, exc) from exc

    def _load(self, path: Any) -> ModelT:
        raise NotImplementedError

    def prepare(self, example: ExampleT) -> Any:
        """Turn one element into the model's input; raise `InputRejected` for one it cannot take."""
        raise NotImplementedError

    def prepare_for(self, example: ExampleT, model: ModelT) -> Any:
        """`prepare` for handlers whose preprocessing depends on the loaded model (e.g. CLIP)."""
        return self.prepare(example)

    def forward(self, model: ModelT, items: list[Any]) -> list[Any]:
        """Run the model on prepared items; one output per item, in order."""
        raise NotImplementedError

    def run_inference(
        self,
        batch: Sequence[ExampleT],
        model: ModelT,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        results: list[PredictionResult | None] = [None] * len(batch)
        ok_index: list[int] = []
        items: list[Any] = []
        for i, example in enumerate(batch):
            try:
                items.append(self.prepare_for(example, model))
                ok_index.append(i)
            except InputRejected as exc:
                reject = ModelReject(self.model_id, exc.reason, exc.detail)
                results[i] = PredictionResult(example, reject, self.model_id)
        if items:
            for i, out in zip(ok_index, self.forward(model, items), strict=True):
                results[i] = self.make_result(batch[i], out)
        return results  # type: ignore[return-value]

    def make_result(self, example: ExampleT, output: Any) -> PredictionResult:
        return PredictionResult(example, output, self.model_id)

    def get_num_bytes(self, batch: Sequence[ExampleT]) -> int:
        # The default pickles the whole batch just to count bytes: far too slow for images.
        total = 0
        for x in batch:
            total += x.nbytes if isinstance(x, np.ndarray) else len(str(x))
        return total

    def get_metrics_namespace(self) -> str:
        return f"mmdata_{self.model_id}"


def map_groups(
    items: Sequence[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray]:
    """Stack same-shape items, call `fn` on each stacked group, and return per-item outputs in order."""
    out: list[Any] = [None] * len(items)
    for _, idx in group_by_shape(items).items():
        result = fn(np.stack([items[i] for i in idx]))
        for j, i in enumerate(idx):
            out[i] = result[j]
    return out
