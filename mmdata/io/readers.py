"""Sources of image-text pairs, as Beam PTransforms yielding RawRecords.

- `ReadFolder(root)`: a folder tree of images, each with a sidecar caption `<stem>.json` (object with a
  caption field plus free metadata) and/or `<stem>.txt`. With both, the JSON caption is used (the `.txt`
  only when the JSON has none) and the record's metadata `caption_sidecar` says which one.
- `ReadManifest(pattern)`: Parquet, CSV or JSONL files with an image path column and a caption column; other
  columns become metadata; relative paths are relative to the manifest's folder.
- `ReadWebDataset(pattern)`: tar shards as img2dataset writes them (`NNNNN.tar` with `<key>.jpg|png|webp`,
  `<key>.txt`, `<key>.json`, and a same-stem `.parquet` whose failed downloads become rejects).

Every record's `source` is unique (a file path, `manifest#row`, `tar::key`), so a duplicate key is always
resolvable. Readers never raise on bad data: a record they already know is bad carries `error=(reason, detail)` and becomes
a reject in the ingest stage. Every path goes through `apache_beam.io.filesystems`, so gs:// and s3:// work
where the matching Beam extras are installed.
"""

from __future__ import annotations

import glob
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mmdata.config import IngestConfig
from mmdata.core.keys import slug, slug_key, stable_hash
from mmdata.io import paths
from mmdata.io.sourcebytes import SourceBytes, file_stamp, is_local
from mmdata.records import RawRecord

IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
SIDECAR_EXTS = {"json", "txt"}
# Documentation files a folder of images often carries (README, LICENSE.txt, ATTRIBUTION.txt; and
# any .md / .jsonl): skipped by their whole stem, never when they are images. Hidden files and anything under a hidden folder (`.git/`, `.thumbnails/`)
# are skipped too.
IGNORED_PREFIXES = ("readme", "license", "licence", "attribution")


def _split_ext(path: str) -> tuple[str, str]:
    base = posixpath.basename(path)
    if "." not in base.lstrip("."):
        return path, ""
    stem, ext = path.rsplit(".", 1)
    return stem, ext.lower()


def _read_bytes(
    path: str, size: int | None, max_bytes: int, by_reference: bool = False
) -> tuple[bytes | None, tuple[str, str] | None]:
    """The file's bytes (a `SourceBytes` for a local file when `by_reference`), or a reject reason.

    A local file is read with `open` (sized by `fstat`), except one with a compression extension
    (`.gz`, `.bz2`, ...), which goes through Beam's FileSystems as before, decompressed and inline.
    """
    if size is not None and size > max_bytes:
        return None, ("file_too_large", f"{size} bytes > {max_bytes}")
    stamp = None
    try:
        if is_local(path) and not _compressed(path):
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                stamp = file_stamp(st)
                # read(max_bytes + 1) would allocate max_bytes (64 MB) for every small file
                size = min(st.st_size, max_bytes) + 1
                data = f.read(size)
                if len(data) == size <= max_bytes:  # the file grew since fstat: read to the limit
                    data += f.read(max_bytes + 1 - size)
                    stamp = None
        elif not _compressed(path):
            with paths.open_read(path) as f:  # an object store's file (one client per thread)
                data = f.read(max_bytes + 1)
        else:
            with FileSystems.open(path) as f:  # decompressed by extension
                data = f.read(max_bytes + 1)
    except Exception as e:  # noqa: BLE001 - unreadable file is a reject
        return None, ("unreadable_file", f"{type(e).__name__}: {e}")
    if len(data) > max_bytes:
        return None, ("file_too_large", f"more than {max_bytes} bytes")
    if by_reference and data and stamp is not None:
        return SourceBytes(data, path, stamp=stamp), None
    return data, None


def _compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def _parse_sidecar_json(
    data: bytes, caption_field: str
) -> tuple[Any, dict[str, Any], tuple[str, str] | None]:
    try:
        doc = json.loads(data.decode("utf-8-sig"))  # a UTF-8 BOM (Windows tools) is dropped
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, {}, ("bad_sidecar", f"json sidecar does not parse: {e}")
    if not isinstance(doc, dict):
        return None, {}, ("bad_sidecar", "json sidecar is not an object")
    caption = doc.pop(caption_field, None)
    if caption is not None and not isinstance(caption, str):
        return None, doc, ("bad_sidecar", f"{caption_field!r} is not a string")
    return caption, doc, None


class _FolderGroupFn(beam.DoFn):
    """(stem, [(ext, path, size)]) -> RawRecords for one stem of a folder tree."""

    def __init__(self, root: str, cfg: IngestConfig):
        self.root = root.rstrip("/")
        self.cfg = cfg

    def process(self, element: tuple[str, list[tuple[str, str, int]]]) -> Iterator[RawRecord]:
        stem, files = element
        rel_stem = stem[len(self.root) :].lstrip("/")
        by_ext = {}
        for ext, path, size in sorted(files):
            by_ext.setdefault(ext, []).append((path, size))
        images = sorted(e for e in by_ext if e in IMAGE_EXTS)
        others = sorted(e for e in by_ext if e not in IMAGE_EXTS | SIDECAR_EXTS)
        for ext in others:
            for path, _ in by_ext[ext]:
                rel = path[len(self.root) :].lstrip("/")
                yield RawRecord(
                    key=slug_key(rel),
                    source=path,
                    image=None,
                    caption=None,
                    error=(
                        "unsupported_extension",
                        f".{ext} is neither an image nor a caption sidecar",
                    ),
                )
        if not images:
            for ext in sorted(e for e in by_ext if e in SIDECAR_EXTS):
                for path, _ in by_ext[ext]:
                    yield RawRecord(
                        key=slug(rel_stem),
                        source=path,
                        image=None,
                        caption=None,
                        error=("orphan_sidecar", "caption sidecar without an image"),
                    )
            return
        caption: Any = None
        metadata: dict[str, Any] = {}
        error: tuple[str, str] | None = None
        if "json" in by_ext:
            data, error = _read_bytes(by_ext["json"][0][0], by_ext["json"][0][1], 1 << 20)
            if data is not None:
                caption, metadata, error = _parse_sidecar_json(data, self.cfg.caption_field)
        if caption is None and error is None and "txt" in by_ext:
            caption, error = _read_bytes(by_ext["txt"][0][0], by_ext["txt"][0][1], 1 << 20)
            if "json" in by_ext:
                metadata["caption_sidecar"] = "txt"
        elif "json" in by_ext and "txt" in by_ext and error is None:
            # Both sidecars: the JSON caption wins; say so, since the .txt was not read.
            metadata["caption_sidecar"] = "json"
        if caption is None and error is None:
            error = ("caption_missing", "no .txt or .json sidecar with a caption")
        # Two images with one stem (a.png + a.jpg, or a.png + a.PNG) share the sidecar; keys stay
        # distinct: the first keeps the stem's key, the others add their extension as written.
        numbered = [(ext, path, size) for ext in images for path, size in by_ext[ext]]
        for n, (ext, path, size) in enumerate(numbered):
            written = path.rsplit(".", 1)[-1]
            key = slug(rel_stem) + ("" if n == 0 else f"_{slug(written)}")
            if n and written != ext:  # a.PNG beside a.png: keep the case apart
                key += f"_{stable_hash(written, n=4)}"
            image, read_error = (
                (None, error)
                if error
                else _read_bytes(path, size, self.cfg.max_file_bytes, self.cfg.bytes_by_reference)
            )
            yield RawRecord(
                key=key,
                source=path,
                image=image,
                caption=caption,
                metadata=dict(metadata),
                error=read_error or error,
                url=metadata.get("url"),
            )


class _Source(beam.PTransform):
    """A reader of `pattern` (a folder, or a file glob) with the ingest config.

    `root` is the folder or file as named, when `pattern` is it with glob characters escaped (a folder
    `photos [2024]` is read as itself, not as a pattern); records' keys are relative to it."""

    def __init__(self, pattern: str, cfg: IngestConfig | None = None, root: str | None = None):
        super().__init__()
        self.pattern = pattern.rstrip("/")
        self.root = (root or pattern).rstrip("/")
        self.cfg = cfg or IngestConfig()


class ReadFolder(_Source):
    """Image files under the folder `pattern` (recursively) with their sidecar captions."""

    def expand(self, pbegin):
        root = self.root

        def keyed(meta) -> Iterator[tuple[str, tuple[str, str, int]]]:
            base = posixpath.basename(meta.path)
            rel = meta.path[len(root) :].lstrip("/")
            if any(part.startswith(".") for part in rel.split("/")):
                return  # hidden files and everything under hidden folders
            name_stem, name_ext = _split_ext(base.lower())
            if name_ext not in IMAGE_EXTS and (
                name_stem in IGNORED_PREFIXES or name_ext in ("md", "jsonl")
            ):
                return
            stem, ext = _split_ext(meta.path)
            yield stem, (ext, meta.path, meta.size_in_bytes)

        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern + "/**")
            | "ByStem" >> beam.FlatMap(keyed)
            | "GroupStem" >> beam.GroupByKey()
            | "Records" >> beam.ParDo(_FolderGroupFn(self.root, self.cfg))
        )


def _manifest_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(row index, row or None, error detail) for every row of a manifest file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    ext = _split_ext(path)[1]
    with FileSystems.open(path) as f:
        data = f.read()
    if ext in ("jsonl", "json", "ndjson"):
        for i, line in enumerate(data.splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("row is not an object")
            except ValueError as e:
                yield i, None, f"line {i + 1}: {e}"
                continue
            yield i, row, ""
        return
    if ext == "parquet":
        table = pq.read_table(io.BytesIO(data))
    elif ext in ("csv", "tsv"):
        opts = pacsv.ParseOptions(delimiter="\t" if ext == "tsv" else ",", newlines_in_values=True)
        table = pacsv.read_csv(io.BytesIO(data), parse_options=opts)
    else:
        raise ValueError(
            f"unsupported manifest format {ext!r} for {path} (use .parquet, .csv or .jsonl)"
        )
    for i, row in enumerate(table.to_pylist()):
        yield i, row, ""


class _ManifestRowFn(beam.DoFn):
    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg

    def process(self, item: tuple[str, int, dict[str, Any] | None, str]) -> Iterator[RawRecord]:
        manifest, i, row, err = item
        stem = slug_key(posixpath.basename(manifest))
        default_key = f"{stem}_{i:09d}"
        if row is None:
            yield RawRecord(
                key=default_key,
                source=f"{manifest}#{i}",
                image=None,
                caption=None,
                error=("bad_manifest_row", err),
            )
            return
        cfg = self.cfg
        key = row.get(cfg.key_field)
        key = slug(str(key)) if key not in (None, "") else default_key  # a key has no extension
        path = row.get(cfg.path_field)
        caption = row.get(cfg.caption_field)
        metadata = {
            k: v
            for k, v in row.items()
            if k not in (cfg.path_field, cfg.caption_field, cfg.key_field)
        }
        metadata = json.loads(json.dumps(metadata, default=str))
        source = f"{manifest}#{i}"

        def record(image: bytes | None, error: tuple[str, str] | None) -> RawRecord:
            url = metadata.get("url") if isinstance(metadata.get("url"), str) else None
            return RawRecord(
                key=key,
                source=source,
                image=image,
                caption=caption,
                metadata=metadata,
                url=url,
                error=error,
            )

        if not isinstance(path, str) or not path:
            yield record(None, ("missing_path", f"no {cfg.path_field!r} in row"))
            return
        if isinstance(caption, float) and caption != caption:  # NaN: pandas' missing value
            caption = None
        if caption is not None and not isinstance(caption, (str, bytes)):
            # as for JSON sidecars: a list, number or object is not a caption ("nan", "['a', 'b']")
            kind = type(caption).__name__
            yield record(None, ("caption_not_text", f"{cfg.caption_field!r} is a {kind}, not text"))
            return
        if is_local(path) and not path.startswith("/"):
            path = FileSystems.join(posixpath.dirname(manifest), path)
        metadata["path"] = path
        try:
            exists = paths.exists(path)
        except ValueError as e:
            # no Beam filesystem for the scheme (gs:// without apache-beam[gcp])
            yield record(None, ("unsupported_filesystem", f"{path}: {e}"))
            return
        if not exists:
            yield record(None, ("missing_file", f"{path} does not exist"))
            return
        yield record(*_read_bytes(path, None, cfg.max_file_bytes, cfg.bytes_by_reference))


class ReadManifest(_Source):
    """Rows of Parquet/CSV/JSONL manifests naming image paths and captions."""

    def expand(self, pbegin):
        def rows(meta):
            for i, row, err in _manifest_rows(meta.path):
                yield meta.path, i, row, err

        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Rows" >> beam.FlatMap(rows)
            | "Spread" >> beam.Reshuffle()
            | "Load" >> beam.ParDo(_ManifestRowFn(self.cfg))
        )


def _unsafe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":")


class _TarFn(beam.DoFn):
    """One img2dataset-style tar (+ its parquet) -> RawRecords."""

    def __init__(self, cfg: IngestConfig):
        self.cfg = cfg

    def _status_rows(self, tar_path: str) -> dict[str, dict[str, Any]]:
        import pyarrow.parquet as pq

        pq_path = tar_path[: -len(".tar")] + ".parquet"
        if not FileSystems.exists(pq_path):
            return {}
        with FileSystems.open(pq_path) as f:
            table = pq.read_table(io.BytesIO(f.read()))
        return {str(r.get("key")): r for r in table.to_pylist() if r.get("key") is not None}

    def process(self, meta) -> Iterator[RawRecord]:
        tar_path = meta.path
        cfg = self.cfg
        try:
            status = self._status_rows(tar_path)
        except Exception as e:  # noqa: BLE001
            yield RawRecord(
                key=slug_key(posixpath.basename(tar_path)) + "_parquet",
                source=tar_path,
                image=None,
                caption=None,
                error=("bad_sidecar", f"parquet: {e}"),
            )
            status = {}
        seen_ok: set[str] = set()
        repeats: list[str] = []
        group: dict[str, bytes] = {}
        group_key: str | None = None

        def flush() -> Iterator[RawRecord]:
            if group_key is None:
                return
            rec = self._record(tar_path, group_key, dict(group), status.get(group_key))
            if group_key in seen_ok:  # the same key twice in one tar: keep the sources distinct
                rec.source += f"#{sum(1 for k in repeats if k == group_key) + 1}"
                repeats.append(group_key)
            seen_ok.add(group_key)
            yield rec

        try:
            # the tar's version, for members passed by reference (taken before reading it)
            stamp = file_stamp(os.stat(tar_path)) if is_local(tar_path) else None
            with FileSystems.open(tar_path) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                by_ref = (
                    cfg.bytes_by_reference
                    and stamp is not None
                    and getattr(tar.fileobj, "comptype", "") == "tar"
                )
                for ti in tar:
                    name = ti.name
                    src = f"{tar_path}::{name}"
                    if ti.isdir():
                        continue
                    if _unsafe_member(name) or not ti.isreg():
                        yield from flush()  # the sample before it is complete: its members ended
                        group, group_key = {}, None
                        kind = (
                            "path escapes the archive"
                            if _unsafe_member(name)
                            else "not a regular file"
                        )
                        yield RawRecord(
                            key=slug_key(name),
                            source=src,
                            image=None,
                            caption=None,
                            error=("unsafe_tar_member", f"{name!r}: {kind}"),
                        )
                        continue
                    base = posixpath.basename(name)
                    if "." not in base:
                        yield from flush()
                        group, group_key = {}, None
                        yield RawRecord(
                            key=slug_key(name),
                            source=src,
                            image=None,
                            caption=None,
                            error=("unsupported_extension", f"member {name!r} has no extension"),
                        )
                        continue
                    key, ext = base.split(".", 1)
                    key = slug(posixpath.join(posixpath.dirname(name), key))
                    if key != group_key:
                        yield from flush()
                        group, group_key = {}, key
                    if ti.size > cfg.max_file_bytes:
                        group[ext.lower()] = b""
                        group["__too_large__"] = f"{ext}: {ti.size} bytes".encode()
                        continue
                    fobj = tar.extractfile(ti)
                    data = fobj.read() if fobj else b""
                    if by_ref and data and ext.lower() in IMAGE_EXTS and not ti.issparse():
                        # offsets are file offsets in an uncompressed tar; a sparse member is
                        # stored packed, so its region on disk is not its bytes
                        data = SourceBytes(data, tar_path, ti.offset_data, stamp=stamp)
                    group[ext.lower()] = data
                # Python's tarfile ends quietly when the file stops at or inside a member header;
                # only a zero block marks a complete archive, so a file too short to hold one there
                # was cut off (the sample being read is then as suspect as one cut mid-data).
                size = getattr(meta, "size_in_bytes", None)
                plain = getattr(tar.fileobj, "comptype", "tar") == "tar"  # offsets = file bytes
                if plain and size is not None and size < tar.offset + tarfile.BLOCKSIZE:
                    raise tarfile.ReadError(
                        f"archive ends at byte {size} without its end-of-archive block "
                        f"(expected at byte {tar.offset}): truncated"
                    )
                yield from flush()
                group_key = None
        except (tarfile.TarError, OSError, EOFError) as e:
            if group_key is not None:  # the sample being read when the tar broke may be incomplete
                yield RawRecord(
                    key=group_key,
                    source=f"{tar_path}::{group_key}",
                    image=None,
                    caption=None,
                    error=("corrupt_tar", f"sample cut off by {type(e).__name__}: {e}"),
                )
                seen_ok.add(group_key)
            yield RawRecord(
                key=slug_key(posixpath.basename(tar_path)) + "_tar",
                source=tar_path,
                image=None,
                caption=None,
                error=("corrupt_tar", f"{type(e).__name__}: {e}"),
            )
        for key, row in sorted(status.items()):
            if key not in seen_ok and row.get("status") not in (None, "success"):
                yield RawRecord(
                    key=key,
                    source=f"{tar_path}#parquet",
                    image=None,
                    caption=row.get("caption"),
                    url=row.get("url"),
                    error=("download_failed", str(row.get("error_message") or row.get("status"))),
                )

    def _record(
        self, tar_path: str, key: str, members: dict[str, bytes], row: dict | None
    ) -> RawRecord:
        src = f"{tar_path}::{key}"
        metadata: dict[str, Any] = {}
        caption: Any = None
        error: tuple[str, str] | None = None
        if "json" in members:
            caption, metadata, error = _parse_sidecar_json(members["json"], self.cfg.caption_field)
        if caption is None and "txt" in members:
            caption = members["txt"]
        if row:
            metadata.setdefault("url", row.get("url"))
        images = sorted(e for e in members if e in IMAGE_EXTS)
        if "__too_large__" in members:
            error = ("file_too_large", members["__too_large__"].decode())
        elif not images:
            error = error or ("missing_image", f"sample has members {sorted(members)} but no image")
        image = members[images[0]] if images else None
        url = metadata.get("url") if isinstance(metadata.get("url"), str) else None
        return RawRecord(
            key=key,
            source=src,
            image=image,
            caption=caption,
            metadata=metadata,
            url=url,
            error=error,
        )


class ReadWebDataset(_Source):
    """img2dataset-style WebDataset tar shards."""

    def expand(self, pbegin):
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Spread" >> beam.Reshuffle()
            | "Tars" >> beam.ParDo(_TarFn(self.cfg))
        )


def detect_kind(path: str) -> tuple[str, str]:
    """(kind, pattern) for an input path: a folder, a manifest file/glob, or tar shards.

    A folder holding `.tar` files at its top level is WebDataset shards, unless it also holds images: then
    the kind is ambiguous and must be given (`--input_kind folder|webdataset`) rather than guessed, since
    either guess would leave one kind of file unread. A single file that is neither a manifest nor a tar
    is refused (ingest reads folders of images, not one image).
    """
    ext = _split_ext(path)[1]
    literal = _literal(path)
    if ext in ("parquet", "csv", "tsv", "jsonl", "ndjson", "json"):
        return "manifest", literal
    if ext == "tar":
        return "webdataset", literal
    root = path.rstrip("/")
    # an object store has no folders: a prefix exists when objects lie under it
    if not FileSystems.exists(path) and (
        is_local(path) or not FileSystems.match([root + "/*"])[0].metadata_list
    ):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if is_local(path) and os.path.isfile(path):
        raise ValueError(
            f"input {path!r} is a file but not a manifest (.parquet/.csv/.tsv/.jsonl/.json) or a .tar "
            "shard; give the folder that holds the images"
        )
    pat = _literal(root)
    if not FileSystems.match([pat + "/*.tar"])[0].metadata_list:
        return "folder", pat
    images = [
        m.path
        for m in FileSystems.match([pat + "/*"])[0].metadata_list
        if _split_ext(m.path)[1] in IMAGE_EXTS
    ]
    if images:
        raise ValueError(
            f"input folder {path!r} holds both .tar shards and loose images (e.g. {images[0]}); "
            "say which to read with --input_kind webdataset or --input_kind folder"
        )
    return "webdataset", pat + "/*.tar"


_GLOB_CHARS = ("*", "?", "[")


def _literal(path: str) -> str:
    """`path` as a match pattern: an existing local path with glob characters (`photos [2024]`) is
    escaped, so it is read as itself; a missing local path without glob characters is refused here
    (`FileNotFoundError`) rather than matching nothing; a glob that matches nothing is refused too."""
    if not is_local(path):
        return path
    if os.path.exists(path):
        return glob.escape(path) if any(c in path for c in _GLOB_CHARS) else path
    if not any(c in path for c in _GLOB_CHARS):
        raise FileNotFoundError(f"input {path!r} does not exist")
    if not glob.glob(path, recursive=True):
        raise FileNotFoundError(f"no files match the input pattern {path!r}")
    return path


def read_source(path: str, kind: str = "auto", cfg: IngestConfig | None = None) -> beam.PTransform:
    """The reader PTransform for an input path.

    A local path is made absolute first, so records' `source` (and so the shards' bytes) do not depend on
    the directory the job was started from.
    """
    if is_local(path):
        path = os.path.abspath(path) + ("/" if path.endswith("/") else "")
    root = path
    if kind == "auto":
        kind, pattern = detect_kind(path)
    else:
        pattern = _literal(path)
        if kind == "webdataset" and not path.endswith((".tar", ".tar.gz", ".tgz")):
            pattern = pattern.rstrip("/") + "/*.tar"
        if is_local(path):
            if kind == "manifest" and os.path.isdir(path):
                raise ValueError(f"input_kind manifest needs a file or glob, {path!r} is a folder")
            if kind == "folder" and os.path.isfile(path):
                raise ValueError(f"input_kind folder needs a folder, {path!r} is a file")
    if kind == "folder":
        return ReadFolder(pattern, cfg, root=root)
    if kind == "manifest":
        return ReadManifest(pattern, cfg, root=root)
    if kind == "webdataset":
        return ReadWebDataset(pattern, cfg, root=root)
    raise ValueError(f"unknown input kind {kind!r}")
