"""Learned aesthetic score: a LAION-style linear or MLP head on image embeddings.

Weights come from a local file only (`weights_path` or `$MMDATA_AESTHETIC_WEIGHTS`), loaded with
`torch.load(weights_only=True)` or safetensors. Both LAION layouts load:

* linear (`sa_0_4_vit_*_linear.pth`): keys `weight` (1, D), `bias` (1,);
* MLP (improved-aesthetic-predictor, `sac+logos+ava1-l14-linearMSE.pth`): keys `layers.{0,2,4,6,7}.*`.

The head must match the embedder that made the vectors (LAION's were trained on CLIP ViT-L/14 or B/32
image embeddings). Without weights, a quality stage uses the technical metrics only: check
`mmdata.weights.check("aesthetic-head").state` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmdata.models.base import BatchedModelHandler, InputRejected, torch_device


class AestheticHead(nn.Module):
    """Score head. `x: (N, D)` unit image embeddings -> `(N,)` scores.

    Args:
        dims: layer widths from input to output, e.g. [768, 1] (linear) or [768, 1024, 128, 64, 16, 1].
    """

    def __init__(self, dims: list[int]):
        super().__init__()
        if dims[-1] != 1 or len(dims) < 2:
            raise ValueError(f"aesthetic head dims must end in 1, got {dims}")
        self.dims = dims
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # LAION's MLP has no activations between its linear layers (dropout only, off at eval).
        for layer in self.layers:
            x = layer(x)
        return x[:, 0]


def head_from_state_dict(state: dict[str, torch.Tensor]) -> AestheticHead:
    """Build an `AestheticHead` from either LAION layout (see the module docstring)."""
    if set(state) == {"weight", "bias"}:
        weights = [state["weight"]]
        biases = [state["bias"]]
    else:
        idx = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
        if not idx:
            raise ValueError(f"not an aesthetic head state dict; keys: {sorted(state)[:6]}")
        weights = [state[f"layers.{i}.weight"] for i in idx]
        biases = [state[f"layers.{i}.bias"] for i in idx]
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    head = AestheticHead(dims)
    with torch.no_grad():
        for layer, w, b in zip(head.layers, weights, biases, strict=True):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return head.eval()


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """Load a head from `.safetensors` or a torch state-dict file (`weights_only=True`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    return head_from_state_dict(state)


class AestheticScoreHandler(BatchedModelHandler[np.ndarray, AestheticHead]):
    """Aesthetic scores. Element: a float image embedding (D,). Output: float score.
    Embeddings are L2-normalised first (as LAION did); a wrong dimension, non-finite values or an element
    that is not numbers at all becomes a `bad_embedding` reject.
    """

    weights_name = "aesthetic-head"

    def __init__(self, *, weights_sha256: str | None = None, **kwargs: Any):
        super().__init__(weights_sha256=weights_sha256, **kwargs)

    def _load(self, path: Path) -> AestheticHead:
        return load_aesthetic_head(path).to(torch_device(self.device))

    def prepare_for(self, example: Any, model: AestheticHead) -> np.ndarray:
        try:
            vec = np.asarray(example, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # a str, a dict, ragged lists, ...
            raise InputRejected(
                "bad_embedding",
                f"expected {model.dims[0]} finite floats, got {type(example).__name__} ({exc})",
            ) from None
        if vec.shape != (model.dims[0],) or not np.isfinite(vec).all():
            raise InputRejected(
                "bad_embedding", f"expected {model.dims[0]} finite floats, got shape {vec.shape}"
            )
        return vec

    def forward(self, model: AestheticHead, items: list[np.ndarray]) -> list[float]:
        dev = next(model.parameters()).device
        with torch.inference_mode():
            x = F.normalize(torch.from_numpy(np.stack(items)).to(dev), dim=-1)
            return [float(s) for s in model(x).cpu()]
