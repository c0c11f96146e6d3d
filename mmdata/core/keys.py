"""Deterministic keys and hashes."""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def slug(text: str) -> str:
    """A readable key from `text` as it is (no extension handling): runs of anything but [A-Za-z0-9_-]
    become '_'. Keys never contain dots (webdataset splits member names at the first dot).

    Punctuation, spaces, dots and '/' become '_' as they are; a text with other characters (non-ASCII
    letters, which would all vanish: `猫` and `犬` would both be `_`) gets 8 hex digits of its hash
    appended, so distinct names keep distinct keys: `été` -> `t_<hash>`, `猫` -> `<hash>`."""
    key = _UNSAFE.sub("_", text.strip("/")).strip("_")
    if not text.isascii() or not key:
        key = f"{key}_{stable_hash(text, n=8)}" if key else stable_hash(text, n=8)
    return key


def slug_key(path: str) -> str:
    """`slug` of a relative file path with its extension (the text after the last dot of the file name)
    dropped: `emoji/noto/1f680.png` -> `emoji_noto_1f680`, `clip.0001.png` -> `clip_0001`."""
    stem = path.rsplit(".", 1)[0] if "." in path.rsplit("/", 1)[-1] else path
    return slug(stem)


def stable_hash(*parts: str, n: int = 32) -> str:
    """Hex digest (n chars) of the parts joined by NUL: same inputs, same value, on every machine.
    Text that is not valid Unicode (a non-UTF-8 file name, read with its bytes as lone surrogates)
    hashes too (`surrogatepass`); valid text hashes as its UTF-8."""
    h = hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
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
