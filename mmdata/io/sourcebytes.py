"""Image bytes that travel between Beam stages as a reference to where they were read.

A job's records carry encoded images from the reader to the shard writer, through up to three points
where the runner materialises them (the duplicate-key side input, the shard plan, the shard
GroupByKey). Copying the bytes through a runner's data plane at each of those costs far more than the
decode itself on a local runner (the in-memory FnApiRunner moves about 150 MB/s per materialisation).
An image that ingest keeps byte for byte (a clean 8-bit JPEG/PNG/WebP) is already on disk at a known
place, so it does not need to travel at all:

`SourceBytes` is a `bytes` (every consumer sees the real bytes) that remembers the file region it came
from. It pickles, which is how Beam's default coder encodes records, as `(path, offset, length, crc32,
stamp)` and is re-read where it is unpickled, after checking that the file is the one it was read from
(`stamp`: device, inode, size and mtime, as read by `fstat` when the bytes were first read) and that
the bytes have the same CRC-32. A region that changed while the job ran raises `SourceChangedError`
(the job stops with the file named) instead of writing other bytes. (The checks are against accidents,
a file rewritten or replaced during a run, not against an adversary who can write the inputs anyway;
CRC-32 takes a third of SHA-256's time, which was most of a re-read's cost.)

Readers make them only for local files (`ingest.bytes_by_reference`, on by default): re-reading a local
file from the page cache is cheap, while a second read from an object store (`gs://`, `s3://`) is a
billed request, so remote sources keep their bytes inline.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from typing import Any

# Regions pickled in this process are kept (least recently pickled dropped first, up to CACHE_BYTES
# of bytes) and not read again when this process unpickles them: on a one-process runner a record
# crosses three materialisation points, and the three re-reads were about 5 % of an ingest job.
CACHE_BYTES = 128 << 20
Stamp = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns
_Ref = tuple[str, int, int, int, Stamp | None]
_cache: OrderedDict[_Ref, SourceBytes] = OrderedDict()
_cache_bytes = 0
_lock = threading.Lock()


def _remember(ref: _Ref, data: SourceBytes) -> None:
    global _cache_bytes
    with _lock:
        if ref in _cache:
            _cache.move_to_end(ref)
            return
        _cache[ref] = data
        _cache_bytes += ref[2]
        while _cache_bytes > CACHE_BYTES and _cache:
            _cache_bytes -= _cache.popitem(last=False)[0][2]


def clear_cache() -> None:
    """Forget the regions pickled in this process (their next unpickling reads the file again)."""
    global _cache_bytes
    with _lock:
        _cache.clear()
        _cache_bytes = 0


class SourceChangedError(RuntimeError):
    """The bytes of a source file region are not what was read from it earlier in the job."""


def file_stamp(st: os.stat_result) -> Stamp:
    """What identifies a file's version: device, inode, size, modification time."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class SourceBytes(bytes):
    """Bytes read from `path` at `offset` that pickle as a reference and are re-read on unpickling.

    Attributes:
        path: local file the bytes were read from.
        offset: byte offset of the region in the file.
        crc32: CRC-32 of the bytes (computed when first pickled).
        stamp: `file_stamp` of the file when the bytes were read (None: not checked).
    """

    path: str
    offset: int
    crc32: int | None
    stamp: Stamp | None

    def __new__(
        cls,
        data: bytes,
        path: str,
        offset: int = 0,
        crc32: int | None = None,
        stamp: Stamp | None = None,
    ):
        obj = super().__new__(cls, data)
        obj.path = path
        obj.offset = offset
        obj.crc32 = crc32
        obj.stamp = stamp
        return obj

    def checksum(self) -> int:
        if self.crc32 is None:
            self.crc32 = zlib.crc32(self)
        return self.crc32

    def __reduce__(self) -> tuple[Any, _Ref]:
        ref = (self.path, self.offset, len(self), self.checksum(), self.stamp)
        if CACHE_BYTES:
            _remember(ref, self)
        return reread, ref

    def __repr__(self) -> str:
        return f"SourceBytes({self.path!r}, offset={self.offset}, length={len(self)})"


def _changed(path: str, what: str) -> SourceChangedError:
    return SourceChangedError(
        f"{path}: {what} since it was read earlier in this job; input files must not change while "
        "a job runs (or set ingest.bytes_by_reference false to carry image bytes through the "
        "pipeline)"
    )


def reread(
    path: str, offset: int, length: int, crc32: int, stamp: Stamp | None = None
) -> SourceBytes:
    """Read `length` bytes of `path` at `offset` again and check they are the ones read before (or
    take them from this process's cache of regions it pickled)."""
    if CACHE_BYTES:
        with _lock:
            hit = _cache.get((path, offset, length, crc32, stamp))
        if hit is not None:
            return hit
    try:
        with open(path, "rb") as f:
            if stamp is not None and file_stamp(os.fstat(f.fileno())) != stamp:
                raise _changed(path, "the file was modified or replaced")
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise SourceChangedError(
            f"{path}: could not be read again ({type(e).__name__}: {e}); input files must stay in "
            "place while a job runs (or set ingest.bytes_by_reference false)"
        ) from e
    if len(data) != length or zlib.crc32(data) != crc32:
        raise _changed(path, f"bytes {offset}..{offset + length} changed (CRC-32 was {crc32:08x})")
    return SourceBytes(data, path, offset, crc32, stamp)


def is_local(path: str) -> bool:
    """True for a path on the local filesystem (no `scheme://`)."""
    return "://" not in path
