"""Deterministic keys and hashes."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def slug_key(path: str) -> str:
    """A readable record key from a relative path: extension dropped, anything but [A-Za-z0-9_-] -> '_'.

    Keys never contain dots (webdataset splits member names at the first dot).
    """
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    key = _UNSAFE.sub("_", stem.strip("/")).strip("_")
    return key or "_"


def stable_hash(*parts: str, n: int = 32) -> str:
    """Hex digest (n chars) of the parts joined by NUL: same inputs, same value, on every machine."""
    h = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return h[:n]


def stable_index(n_choices: int, *parts: str) -> int:
    """A deterministic choice in range(n_choices) from the parts."""
    if n_choices <= 0:
        raise ValueError("n_choices must be > 0")
    return int(stable_hash(*parts, n=16), 16) % n_choices


def shard_key(index: int) -> str:
    """The key of the index-th sample of a dataset: 9+ zero-padded digits."""
    return f"{index:09d}"


def shard_name(index: int) -> str:
    return f"{index:05d}"
