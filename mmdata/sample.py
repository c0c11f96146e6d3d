"""Where the bundled sample corpus lives."""

from __future__ import annotations

from pathlib import Path


def sample_corpus_dir() -> Path:
    path = Path(__file__).resolve().parent / "sample_corpus"
    if not path.is_dir():
        raise FileNotFoundError(f"bundled sample corpus not found at {path}")
    return path
