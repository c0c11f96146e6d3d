"""A response cache keyed by the hash of the request, one small JSON file per request.

The key covers the route (chat/completion), the model id and the full request body (prompt or
messages and every sampling parameter, the seed included) but not the base URL or the API key: the
same request to the same model reproduces the same candidate, whichever port or host served it.
Each entry is written atomically as soon as its response arrives, so an interrupted run keeps
everything it had received and a rerun costs no requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """`$MMDATA_LLM_CACHE`, else `$MMDATA_CACHE_DIR/llm`, else `~/.cache/mmdata/llm`."""
    if os.environ.get("MMDATA_LLM_CACHE"):
        return Path(os.environ["MMDATA_LLM_CACHE"])
    base = os.environ.get("MMDATA_CACHE_DIR") or Path.home() / ".cache" / "mmdata"
    return Path(base) / "llm"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(route: str, model: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(
        canonical_json({"v": CACHE_FORMAT, "route": route, "model": model, "body": body}).encode()
    ).hexdigest()


class ResponseCache:
    """Files `<dir>/<hash[:2]>/<hash>.json` holding `{"key", "route", "model", "body", "text"}`."""

    def __init__(self, directory: str | Path | None = None, enabled: bool = True):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, json.JSONDecodeError):
            # A damaged entry is treated as absent and overwritten by the next response.
            self.misses += 1
            return None
        if entry.get("key") != key or "text" not in entry:
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def check_writable(self) -> None:
        """Create the folder and write and remove a file in it; raises OSError when that fails, so
        a command can refuse an unusable cache before it sends a request."""
        if not self.enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-check-", dir=self.directory)
        os.close(fd)
        os.unlink(tmp)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**entry, "key": key}, f, ensure_ascii=False, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
