"""ControlNet's edge annotators through controlnet-aux: HED (Apache-2.0 re-implementation), PiDiNet and
lineart, with weights the user supplies.

No annotator weights ship in a package. The user points mmdata at the files from
`lllyasviel/Annotators` (a folder holding them, or the file itself for one-file annotators):

    hed      ControlNetHED.pth                     $MMDATA_CONTROLNET_HED_WEIGHTS
    pidinet  table5_pidinet.pth                    $MMDATA_CONTROLNET_PIDINET_WEIGHTS
    lineart  sk_model.pth + sk_model2.pth (folder) $MMDATA_CONTROLNET_LINEART_WEIGHTS

(or `weights_path=` on the handler; `mmdata weights verify controlnet-hed --weights controlnet-hed=PATH`
checks a file).

The networks are controlnet-aux's own classes; the state dicts are read with
`torch.load(weights_only=True)` (controlnet-aux's `from_pretrained` would unpickle arbitrary objects and
may reach for the hub), then wrapped in controlnet-aux's detector so its pre- and post-processing
(resize to multiples of 64, sigmoid/mean of side outputs, inversion for lineart) is exactly the
reference one. The detectors take one image per call, so a batch runs image by image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mmdata import weights
from mmdata.errors import UnknownNameError
from mmdata.models.base import (
    WHITE,
    BatchedModelHandler,
    prepare_image,
    to_rgb,
    torch_device,
)


@dataclass(frozen=True)
class AnnotatorSpec:
    weights_name: str
    files: tuple[str, ...]


ANNOTATORS: dict[str, AnnotatorSpec] = {
    "hed": AnnotatorSpec("controlnet-hed", ("ControlNetHED.pth",)),
    "pidinet": AnnotatorSpec("controlnet-pidinet", ("table5_pidinet.pth",)),
    "lineart": AnnotatorSpec("controlnet-lineart", ("sk_model.pth", "sk_model2.pth")),
}


def _import_controlnet_aux() -> None:
    # controlnet_aux's package __init__ imports every annotator (and warns about optional ones).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import controlnet_aux  # noqa: F401


def annotator_files(name: str, path: Path) -> list[Path]:
    """The weight files of annotator `name` under `path` (a folder, or the file of a one-file annotator).

    Raises:
        WeightsMissingError: a file is not there (the message names it and how to provide it).
    """
    spec = ANNOTATORS[name]
    if path.is_file():
        if len(spec.files) != 1:
            raise weights.WeightsMissingError(
                f"annotator {name!r} needs a folder holding {', '.join(spec.files)}; got the file "
                f"{path}. {weights.get_spec(spec.weights_name).how_to_provide()}"
            )
        return [path]
    files = [path / f for f in spec.files]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise weights.WeightsMissingError(
            f"annotator {name!r}: {path} has no {', '.join(missing)}. "
            f"{weights.get_spec(spec.weights_name).how_to_provide()}"
        )
    return files


def _state_dict(path: Path, name: str) -> dict:
    import torch

    how = weights.get_spec(ANNOTATORS[name].weights_name).how_to_provide()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, pickle with code, ...: say which file
        raise weights.WeightsError(
            f"cannot read annotator weights {path} (annotator {name!r}): "
            f"{type(exc).__name__}: {exc}. {how}"
        ) from None
    if not isinstance(state, dict):
        raise weights.WeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict (annotator {name!r}). {how}"
        )
    return state


def _load_state(net: Any, state: dict, name: str, path: Path) -> None:
    """`net.load_state_dict(state)`, a mismatch (another model's file) raised as a `WeightsError`."""
    try:
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - missing / unexpected keys, shape mismatches
        raise weights.load_error(ANNOTATORS[name].weights_name, path, exc) from exc


def build_detector(name: str, files: list[Path]) -> Any:
    """controlnet-aux's detector for annotator `name` with the weights in `files` (safe loads)."""
    _import_controlnet_aux()
    if name == "hed":
        from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

        net = ControlNetHED_Apache2()
        _load_state(net, _state_dict(files[0], name), name, files[0])
        return HEDdetector(net.float().eval())
    if name == "pidinet":
        from controlnet_aux.pidi import PidiNetDetector
        from controlnet_aux.pidi.model import pidinet

        state = _state_dict(files[0], name)
        state = state.get("state_dict", state)
        net = pidinet()
        _load_state(net, {k.replace("module.", ""): v for k, v in state.items()}, name, files[0])
        return PidiNetDetector(net.eval())
    if name == "lineart":
        from controlnet_aux.lineart import Generator, LineartDetector

        fine, coarse = Generator(3, 1, 3), Generator(3, 1, 3)
        _load_state(fine, _state_dict(files[0], name), name, files[0])
        _load_state(coarse, _state_dict(files[1], name), name, files[1])
        return LineartDetector(fine.eval(), coarse.eval())
    raise UnknownNameError(f"unknown annotator {name!r}; known: {', '.join(ANNOTATORS)}")


class ControlNetAnnotatorHandler(BatchedModelHandler[np.ndarray, Any]):
    """ControlNet edge annotator maps. Element: uint8 RGB/RGBA image. Output: float32 HxW in [0, 1] at the
    input's size (1 = edge / line).

    Args:
        annotator: "hed", "pidinet" or "lineart".
        detect_resolution: the short side the network sees (controlnet-aux rounds sides to multiples
            of 64); default: the image's short side, capped at 512.
        coarse: lineart only, use the coarse model.
        background: RGB colour under transparent pixels.
        min_side: smaller images become a `too_small` reject.
    """

    def __init__(
        self,
        *,
        annotator: str = "hed",
        detect_resolution: int | None = None,
        max_detect_resolution: int = 512,
        coarse: bool = False,
        background: tuple[int, int, int] = WHITE,
        min_side: int = 16,
        weights_sha256: str | None = weights.PINNED,
        **kwargs: Any,
    ):
        if annotator not in ANNOTATORS:
            raise ValueError(f"unknown annotator {annotator!r}; known: {', '.join(ANNOTATORS)}")
        super().__init__(weights_sha256=weights_sha256, **kwargs)
        self.annotator = annotator
        self.detect_resolution = detect_resolution
        self.max_detect_resolution = max_detect_resolution
        self.coarse = coarse
        self.background = background
        self.min_side = min_side

    @property
    def weights_name(self) -> str:  # type: ignore[override]
        return ANNOTATORS[self.annotator].weights_name

    def _load(self, path: Path) -> Any:
        detector = build_detector(self.annotator, annotator_files(self.annotator, path))
        return detector.to(torch_device(self.device))

    def prepare(self, example: Any) -> np.ndarray:
        return to_rgb(prepare_image(example, self.min_side), self.background)

    def _resolution(self, rgb: np.ndarray) -> int:
        if self.detect_resolution:
            return self.detect_resolution
        return max(64, min(min(rgb.shape[:2]), self.max_detect_resolution))

    def forward(self, model: Any, items: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for rgb in items:
            res = self._resolution(rgb)
            kwargs: dict[str, Any] = {"coarse": self.coarse} if self.annotator == "lineart" else {}
            edge = model(
                rgb, detect_resolution=res, image_resolution=res, output_type="np", **kwargs
            )
            edge = edge[:, :, 0] if edge.ndim == 3 else edge
            h, w = rgb.shape[:2]
            if edge.shape != (h, w):
                edge = cv2.resize(edge, (w, h), interpolation=cv2.INTER_LINEAR)
            out.append(edge.astype(np.float32) / 255.0)
        return out
