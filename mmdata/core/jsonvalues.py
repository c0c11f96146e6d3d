"""Free metadata as strict JSON.

Metadata comes from sidecar JSON (Python's `json.loads` accepts `NaN` and `Infinity`), Parquet/CSV
columns (NaN floats, binary columns as bytes, timestamps, decimals) and tar members. Python's `json.dumps`
writes NaN/Infinity as bare words that no other JSON parser accepts, and bytes not at all, so every value
is mapped to strict JSON once, where a record enters the dataset, by one rule:

- a float NaN, Infinity or -Infinity becomes `null` (what pandas and pyarrow mean by NaN: missing);
- bytes become their text when they are valid UTF-8, else their standard base64 (the form protobuf's
  JSON mapping uses for bytes), since the two are told apart by the column's meaning, not the value;
- tuples and sets become lists (sets sorted by their JSON text, so the order is deterministic);
- non-string dict keys become their JSON text (`1` -> `"1"`), as `json.dumps` writes them;
- any other non-JSON value (datetime, Decimal, ...) becomes `str(value)`, as before;
- a string holding a lone UTF-16 surrogate (JSON text may escape one, `"\\ud83d"`, the half of an emoji
  a crawler cut) has it replaced by U+FFFD, so every string is valid Unicode and encodes as UTF-8 (a
  Parquet sidecar refuses it otherwise, and strict UTF-8 readers of the shards' JSON fail on it).

`printable` is the rule for text that names a file (a record's `source`, a reject's detail): a name
that is not UTF-8 (Python reads such a file name with its bytes as lone surrogates) shows those bytes
as `\\xNN`, so it can be written anywhere and still tells the user which file it was.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def valid_text(text: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD (a surrogate pair written as two code points
    becomes its character); valid text is returned as it is."""
    if not _has_surrogate(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def printable(text: str) -> str:
    """A file name or message as valid text: bytes of a non-UTF-8 file name (read by Python as lone
    surrogates, `surrogateescape`) become `\\xNN`, any other lone surrogate `\\udNNN`."""
    if not _has_surrogate(text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file-name byte maps to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(value: Any) -> Any:
    """`value` with every part mapped to strict JSON (see the module docstring); JSON values unchanged."""
    if isinstance(value, str):
        return valid_text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_key(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json_safe(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return valid_text(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # what json.dumps writes for such a key: 1 -> "1", True -> "true"
    return str(key)
