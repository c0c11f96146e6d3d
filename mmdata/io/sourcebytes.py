"""Image bytes that travel between Beam stages as a reference to where they were read.

A job's records carry encoded images from the reader to the shard writer, through up to three points
where the runner materialises them (the duplicate-key side input, the shard plan, the shard
GroupByKey). Copying the bytes through a runner's data plane at each of those costs far more than the
decode itself on a local runner (the in-memory FnApiRunner moves about 150 MB/s per materialisation).
An image that ingest keeps byte for byte (a clean 8-bit JPEG/PNG/WebP) is already on disk at a known
place, so it does not need to travel at all:

`SourceBytes` is a `bytes` (every consumer sees the real bytes) that remembers the file region it came
from. It pickles, which is how Beam's default coder encodes records, as `(path, offset, length,
sha256)` and is re-read, and its sha256 checked, where it is unpickled. A region that changed while the
job ran raises `SourceChangedError` (the job stops with the file named) instead of writing other bytes.

Readers make them only for local files (`ingest.bytes_by_reference`, on by default): re-reading a local
file from the page cache is cheap, while a second read from an object store (`gs://`, `s3://`) is a
billed request, so remote sources keep their bytes inline.
"""

from __future__ import annotations

import hashlib
from typing import Any


class SourceChangedError(RuntimeError):
    """The bytes of a source file region are not what was read from it earlier in the job."""


class SourceBytes(bytes):
    """Bytes read from `path` at `offset` that pickle as a reference and are re-read on unpickling.

    Attributes:
        path: local file the bytes were read from.
        offset: byte offset of the region in the file.
        sha256: hex digest of the bytes (computed when first needed, or set by whoever already has it).
    """

    path: str
    offset: int
    sha256: str | None

    def __new__(cls, data: bytes, path: str, offset: int = 0, sha256: str | None = None):
        obj = super().__new__(cls, data)
        obj.path = path
        obj.offset = offset
        obj.sha256 = sha256
        return obj

    def digest(self) -> str:
        if self.sha256 is None:
            self.sha256 = hashlib.sha256(self).hexdigest()
        return self.sha256

    def __reduce__(self) -> tuple[Any, tuple[str, int, int, str]]:
        return reread, (self.path, self.offset, len(self), self.digest())

    def __repr__(self) -> str:
        return f"SourceBytes({self.path!r}, offset={self.offset}, length={len(self)})"


def reread(path: str, offset: int, length: int, sha256: str) -> SourceBytes:
    """Read `length` bytes of `path` at `offset` again and check they are the ones read before."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise SourceChangedError(
            f"{path}: could not be read again ({type(e).__name__}: {e}); input files must stay in "
            "place while a job runs (or set ingest.bytes_by_reference false)"
        ) from e
    if len(data) != length or hashlib.sha256(data).hexdigest() != sha256:
        raise SourceChangedError(
            f"{path}: bytes {offset}..{offset + length} changed while the job ran (sha256 was "
            f"{sha256[:12]}...); input files must not change while a job runs (or set "
            "ingest.bytes_by_reference false to carry image bytes through the pipeline)"
        )
    return SourceBytes(data, path, offset, sha256)


def is_local(path: str) -> bool:
    """True for a path on the local filesystem (no `scheme://`)."""
    return "://" not in path
