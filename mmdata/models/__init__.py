"""Model backends, one Beam ModelHandler per backend; weights resolved through `mmdata.weights`.

Input contract: see `mmdata.models.base` (numpy uint8 HxWx3 RGB / HxWx4 RGBA images; rejects as
`ModelReject` in `PredictionResult.inference`). Import a backend from its module, e.g.
`from mmdata.models.hed import HEDEdgeHandler`; `HANDLERS` maps config names to import paths.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmdata.errors import UnknownNameError
from mmdata.models.base import ModelReject, is_reject

# Config name -> "module:Class". Stages pick backends by these names.
HANDLERS: dict[str, str] = {
    "clip-image": "mmdata.models.clip:ClipImageEmbedder",
    "clip-text": "mmdata.models.clip:ClipTextEmbedder",
    "efficientnet-lite0": "mmdata.models.features:EfficientNetImageEmbedder",
    "minilm": "mmdata.models.features:MiniLMTextEmbedder",
    "hed": "mmdata.models.hed:HEDEdgeHandler",
    "canny": "mmdata.models.canny:CannyEdgeHandler",
    "controlnet-annotator": "mmdata.models.annotators:ControlNetAnnotatorHandler",
    "u2netp": "mmdata.models.u2net:U2NetMaskHandler",
    "depth-dpt": "mmdata.models.depth:DPTDepthHandler",
    "style-vector": "mmdata.models.style:StyleVectorHandler",
    "style-transfer": "mmdata.models.style:StyleTransferHandler",
    "aesthetic": "mmdata.models.aesthetic:AestheticScoreHandler",
}


def make_handler(name: str, **kwargs: Any) -> Any:
    """Build the handler registered as `name` with `kwargs` (no weights are loaded here)."""
    try:
        module, _, cls = HANDLERS[name].partition(":")
    except KeyError:
        raise UnknownNameError(
            f"unknown model backend {name!r}; known: {', '.join(HANDLERS)}"
        ) from None
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["HANDLERS", "ModelReject", "is_reject", "make_handler"]
