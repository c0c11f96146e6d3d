"""Whole-file reads and writes of a dataset's small files (manifest, sidecars, report) through Beam's
FileSystems, so a dataset in an object store (`gs://`, `s3://`) is read and written like a local one.

Beam builds an object store's client from the pipeline options it was last given
(`FileSystems.set_options`): endpoint, credentials, region. A job sets them when its pipeline is made;
code that touches a dataset before or without a pipeline calls `use_options(beam_args)` first, else
the client would be built with default options (the provider's public endpoint).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import IO, Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mmdata.io.sourcebytes import is_local


def use_options(beam_args: list[str] | None) -> None:
    """Give Beam's filesystems the pipeline options in `beam_args` (object-store endpoint, keys...)."""
    from mmdata.runner import pipeline_options

    FileSystems.set_options(pipeline_options(beam_args))


def join(root: str, *parts: str) -> str:
    """`root/part/...` for a local folder or a `scheme://` prefix."""
    return FileSystems.join(root.rstrip("/") if not is_local(root) else root, *parts)


_THREAD = threading.local()


def _s3io() -> Any:
    """This thread's `S3IO` for the filesystem options in force, or None without Beam's S3 support.

    Beam's S3 filesystem builds a new boto3 client for every call (`exists`, `open`, ...), which costs
    50-170 ms of CPU here: more than reading a small image. One client per thread and per set of
    options is what boto3 recommends (clients are thread-safe, sessions are not)."""
    opts = FileSystems._pipeline_options  # noqa: SLF001 - the options Beam's own filesystems use
    cached = getattr(_THREAD, "s3", None)
    # a forked process (a DataLoader worker) makes its own: a client's connections are not to share
    if cached is not None and cached[0] is opts and cached[2] == os.getpid():
        return cached[1]
    try:
        from apache_beam.io.aws import s3io
    except ImportError:
        return None
    if not s3io.BOTO3_INSTALLED:
        return None
    from apache_beam.options.pipeline_options import PipelineOptions

    client = s3io.S3IO(options=opts if opts is not None else PipelineOptions([]))
    _THREAD.s3 = (opts, client, os.getpid())
    return client


def _direct_s3(path: str) -> Any:
    return _s3io() if path.startswith("s3://") else None


def exists(path: str) -> bool:
    if (s3 := _direct_s3(path)) is not None:
        return s3.exists(path)
    return FileSystems.exists(path)


def open_read(path: str) -> IO[bytes]:
    """The file opened for reading as stored (no decompression by extension)."""
    if (s3 := _direct_s3(path)) is not None:
        return s3.open(path, "rb")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    """The file's bytes as stored (no decompression by extension). FileNotFoundError if absent."""
    if not exists(path):
        raise FileNotFoundError(path)
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def open_write(path: str, mime_type: str = "application/octet-stream") -> Iterator[IO[bytes]]:
    """A file to write whole (replacing `path`), visible at `path` only once the block completes.

    Local files are written under a temporary name in the same folder and renamed (`os.replace`) when
    the block ends; if it raises, the temporary file is removed and `path` is untouched. Object stores
    make an object visible only once its upload completes.
    """
    if not is_local(path):
        with FileSystems.create(
            path, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
        ) as f:
            yield f
        return
    import uuid

    # plain open + os.replace: what Beam's local filesystem does, without its layers
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Write the whole file (replacing it), visible only once complete (see `open_write`)."""
    with open_write(path, mime_type) as f:
        f.write(data)


def list_names(folder: str) -> set[str]:
    """Names of the files directly in `folder` (empty if it does not exist)."""
    pattern = join(folder, "*")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a missing local folder
        return set()
    prefix = join(folder, "")
    return {
        m.path[len(prefix) :]
        for m in found
        if m.path.startswith(prefix) and "/" not in m.path[len(prefix) :]
    }
