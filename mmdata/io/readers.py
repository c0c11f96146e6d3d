"""Sources of image-text pairs, as Beam PTransforms yielding RawRecords.

- `ReadFolder(root)`: a folder tree of images, each with a sidecar caption `<stem>.json` (object with a
  caption field plus free metadata) and/or `<stem>.txt`. With both, the JSON caption is used (the `.txt`
  only when the JSON has none) and the record's metadata `caption_sidecar` says which one. A broken
  symlink is an `unreadable_file` reject (Beam's listing would drop it unseen).
- `ReadManifest(pattern)`: Parquet, CSV/TSV, JSONL or JSON (an array of row objects) files with an image
  path column and a caption column; other columns become metadata (as strict JSON); relative paths are
  relative to the manifest's folder. A row that does not parse is a `bad_manifest_row`, a file that
  cannot be used at all (unreadable, no path or caption column) one `bad_manifest` reject.
- `ReadWebDataset(pattern)`: tar shards as img2dataset writes them (`NNNNN.tar` with `<key>.jpg|png|webp`,
  `<key>.txt`, `<key>.json`, and a same-stem `.parquet` whose failed downloads become rejects); a
  sample's second image is an `extra_image` reject, a member repeating a field `duplicate_member`.

Every record's `source` is unique (a file path, `manifest#row`, `tar::key`), so a duplicate key is always
resolvable. Readers never raise on bad data: a record they already know is bad carries `error=(reason, detail)` and becomes
a reject in the ingest stage. Every path goes through `apache_beam.io.filesystems`, so gs:// and s3:// work
where the matching Beam extras are installed.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import io
import itertools
import json
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mmdata.config import IngestConfig
from mmdata.core.jsonvalues import json_safe, printable
from mmdata.core.keys import slug, slug_key, stable_hash
from mmdata.io import paths
from mmdata.io.sourcebytes import SourceBytes, file_stamp, is_local
from mmdata.records import RawRecord

log = logging.getLogger(__name__)

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


# A caption sidecar larger than this is refused (a caption is a sentence, not a file's worth of text).
MAX_SIDECAR_BYTES = 1 << 20


def _read_sidecar(path: str, size: int | None) -> tuple[bytes | None, tuple[str, str] | None]:
    """A caption sidecar's bytes, or a `bad_sidecar` reason naming it (the image is fine; what
    failed is its caption file: too large, unreadable)."""
    data, error = _read_bytes(path, size, MAX_SIDECAR_BYTES)
    if error:
        name = posixpath.basename(path)
        return None, ("bad_sidecar", f"caption sidecar {name}: {error[0]}: {error[1]}")
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
    """(key, [(stem, ext, path, size)]) -> RawRecords for the stems of a folder tree that share a key.

    Keys come from relative paths by `slug`, which maps different names to one key (`a b.png`,
    `a_b.png`, `a.b.png` and `a/b.png` are all `a_b`); the files are grouped by key, so such stems meet
    here and keep distinct keys: a stem that is its key as written (`a_b`, or `a/b` with its folders'
    `/` as `_`) keeps the key, else the first in name order does, and each other one gets 8 hex digits
    of its name's hash (`a_b_<hash>`), instead of all but one becoming duplicate_key rejects. So adding
    `a b.png` beside an ingested `a_b.png` does not take its key."""

    def __init__(self, root: str, cfg: IngestConfig):
        self.root = root.rstrip("/")
        self.cfg = cfg

    def process(
        self,
        element: tuple[str, list[tuple[str | bytes, str | bytes, str | bytes, int]]],
    ) -> Iterator[RawRecord]:
        key, entries = element
        stems: dict[str, list[tuple[str, str, int]]] = {}
        for stem, ext, path, size in entries:
            stems.setdefault(_unwire(stem), []).append((_unwire(ext), _unwire(path), size))
        rels = {stem: stem[len(self.root) :].lstrip("/") for stem in stems}
        order = sorted(stems, key=lambda st: (rels[st].replace("/", "_") != key, st))
        for n, stem in enumerate(order):
            rel_stem = rels[stem]
            stem_key = key if n == 0 else f"{key}_{stable_hash(rel_stem, n=8)}"
            yield from self._stem_records(rel_stem, stem_key, stems[stem])

    def _stem_records(
        self, rel_stem: str, stem_key: str, files: list[tuple[str, str, int]]
    ) -> Iterator[RawRecord]:
        """The records of one stem's files (its images, sidecars and other files)."""
        by_ext = {}
        for ext, path, size in sorted(files):
            by_ext.setdefault(ext, []).append((path, size))
        images = sorted(e for e in by_ext if e in IMAGE_EXTS)
        others = sorted(e for e in by_ext if e not in IMAGE_EXTS | SIDECAR_EXTS)
        for ext in others:
            for path, _ in by_ext[ext]:
                yield RawRecord(
                    key=stem_key,
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
                        key=stem_key,
                        source=path,
                        image=None,
                        caption=None,
                        error=("orphan_sidecar", "caption sidecar without an image"),
                    )
            return
        # a second sidecar of one kind (`a.json` + `a.JSON`) is not read: a reject names it
        for ext in sorted(e for e in by_ext if e in SIDECAR_EXTS):
            for path, _ in by_ext[ext][1:]:
                yield RawRecord(
                    key=f"{stem_key}_{slug(path.rsplit('.', 1)[-1])}",
                    source=path,
                    image=None,
                    caption=None,
                    error=(
                        "duplicate_sidecar",
                        f"a second .{ext} sidecar of {rel_stem!r}; "
                        f"{by_ext[ext][0][0][len(self.root) :].lstrip('/')!r} was read",
                    ),
                )
        caption: Any = None
        metadata: dict[str, Any] = {}
        error: tuple[str, str] | None = None
        if "json" in by_ext:
            data, error = _read_sidecar(*by_ext["json"][0])
            if data is not None:
                caption, metadata, error = _parse_sidecar_json(data, self.cfg.caption_field)
        if caption is None and error is None and "txt" in by_ext:
            caption, error = _read_sidecar(*by_ext["txt"][0])
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
            key = stem_key + ("" if n == 0 else f"_{slug(written)}")
            if n and written != ext:  # a.PNG beside a.png: keep the case apart
                key += f"_{stable_hash(written, n=4)}"
            if size is None:  # listed, but stat() failed: a broken symlink (see _list_local)
                image, read_error = None, ("unreadable_file", _unlistable_detail(path))
            elif error:
                image, read_error = None, error
            else:
                image, read_error = _read_bytes(
                    path, size, self.cfg.max_file_bytes, self.cfg.bytes_by_reference
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
    `photos [2024]` is read as itself, not as a pattern); records' keys are relative to it, and so is
    their `source`, from the input's folder (`source_base`): `emoji/noto/1f680.png`, `pairs.jsonl#4`,
    `00000.tar::k.png`. So the shards say nothing of where the input lay (a home folder, a mount point)
    and are the same bytes wherever it lies; `manifest.json` records the input (`config.input`)."""

    def __init__(
        self,
        pattern: str,
        cfg: IngestConfig | None = None,
        root: str | None = None,
        output: str | None = None,
    ):
        super().__init__()
        self.pattern = pattern.rstrip("/")
        self.root = (root or pattern).rstrip("/")
        self.cfg = cfg or IngestConfig()
        # the job's output folder, as a local real path: a folder reader never lists it
        self.exclude = os.path.realpath(output) if output and is_local(output) else None

    def expand(self, pbegin):
        base = source_base(self.root, self.pattern)
        return self.read(pbegin) | "RelativeSource" >> beam.Map(relative_source, base)

    def read(self, pbegin):  # noqa: ANN201 - a PCollection of RawRecords with full-path sources
        raise NotImplementedError


def source_base(root: str, pattern: str) -> str:
    """The folder records' `source` is written relative to: a folder input itself; the folder of a
    named manifest or tar file; for a glob, the folder before its first glob character
    (`data/*/m.parquet` and `data/shard-*.tar` -> `data`)."""
    root = root.rstrip("/")
    # a glob as given (an existing path with glob characters is escaped into `pattern`, read as itself)
    if pattern.rstrip("/") == root and any(c in root for c in _GLOB_CHARS):
        return _manifest_base(root, pattern)
    if _split_ext(root)[1] in (*MANIFEST_EXTS, "tar", "gz", "tgz"):
        return posixpath.dirname(root)
    return root


@functools.lru_cache(maxsize=64)
def _under(prefix: str) -> re.Pattern[str]:
    """`prefix` where a path starts (at the start or after a space, quote or parenthesis), not
    inside another path (`/backup/data/x.png` does not lose `/data/`)."""
    return re.compile(r"(?<![^\s'\"(])" + re.escape(prefix))


def relative_source(rec: RawRecord, base: str) -> RawRecord:
    """`rec` with its `source` relative to `base` (unchanged if it does not lie under it: a file a
    manifest row names outside the manifest's folder keeps its full path). Paths under `base` in the
    error detail are made relative too (`missing.png does not exist`, `m.jsonl line 7: ...`), so
    rejects.parquet does not depend on where the input lies either. The source and the detail are
    made `printable`: a file name that is not UTF-8 shows its bytes as `\\xNN` (the record's bytes
    were read through the real name already)."""
    prefix = base.rstrip("/") + "/"
    source = rec.source[len(prefix) :] if rec.source.startswith(prefix) else rec.source
    error = rec.error
    if error:
        detail = _under(prefix).sub("", error[1]) if len(prefix) > 1 else error[1]
        error = (error[0], printable(detail))
    if source == rec.source and printable(source) == source and error == rec.error:
        return rec
    return dataclasses.replace(rec, source=printable(source), error=error)


def _list_local(
    root: str, warn: bool = True, exclude: str | None = None
) -> Iterator[tuple[str, int | None]]:
    """(path, size) of every file under the local folder `root`, in a fixed order. Unlike Beam's local
    listing (which drops them unseen), symlinked folders are followed when they lead out of the tree
    (a folder of links to the real data is common); a link to a folder already in the tree, or to one
    holding it (a link loop, `up -> ..`), is skipped with a warning: its files are read under their
    own names. A file whose `stat`
    fails (a broken symlink) is listed with size None instead of being skipped: an image the reader
    never saw would be neither kept nor rejected. The folder `exclude` (a real path: the job's output,
    met through a followed link) is not listed, with a warning."""
    trees = [
        os.path.realpath(root)
    ]  # real folders being read: the input, and followed link targets

    def overlaps(real: str) -> bool:  # inside a tree being read, or holding one (a link to `..`)
        return any(
            real == t
            or real.startswith(t.rstrip(os.sep) + os.sep)
            or t.startswith(real.rstrip(os.sep) + os.sep)
            for t in trees
        )

    def walk(top: str) -> Iterator[tuple[str, int | None]]:
        for dirpath, dirs, files in os.walk(top):  # symlinked folders are in `dirs`, not descended
            dirs.sort()
            if exclude is not None:
                for d in [d for d in dirs if os.path.realpath(os.path.join(dirpath, d)) == exclude]:
                    log.warning(
                        "%s: not read, it is the job's output folder", os.path.join(dirpath, d)
                    )
                    dirs.remove(d)
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                try:
                    size: int | None = os.path.getsize(path)
                except OSError:
                    size = None
                yield path, size
            for d in dirs:
                link = os.path.join(dirpath, d)
                if not os.path.islink(link):
                    continue
                real = os.path.realpath(link)
                if overlaps(real):
                    if warn:  # the job's listing says it; the check before the job is silent
                        log.warning(
                            "%s: not followed, it links to %s, which is (or holds) a folder read "
                            "already",
                            link,
                            real,
                        )
                    continue
                trees.append(real)
                yield from walk(link)

    yield from walk(root)


def _unlistable_detail(path: str) -> str:
    if os.path.islink(path):
        return f"broken symlink: {path} -> {os.readlink(path)}, which does not exist"
    try:
        os.stat(path)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return "the file could not be listed"


def _skipped_in_folder(rel: str) -> bool:
    """Whether a folder reader skips the file at `rel` (relative to the folder) without a record:
    hidden files, anything under a hidden folder, and documentation files that are not images."""
    if any(part.startswith(".") for part in rel.split("/")):
        return True
    name_stem, name_ext = _split_ext(posixpath.basename(rel).lower())
    return name_ext not in IMAGE_EXTS and (
        name_stem in IGNORED_PREFIXES or name_ext in ("md", "jsonl")
    )


def check_folder_has_images(root: str) -> None:
    """Refuse (ValueError) a local folder with no image file anywhere under it, before the job runs:
    a job over it could only write an empty dataset (or one of rejects: a folder of captions without
    their images is a wrong path far more often than data)."""
    others: list[str] = []
    n_others = 0
    for path, _ in _list_local(root, warn=False):
        rel = path[len(root) :].lstrip("/")
        if _skipped_in_folder(rel):
            continue
        if _split_ext(path)[1] in IMAGE_EXTS:
            return
        n_others += 1
        if len(others) < 3:
            others.append(rel)
    exts = " ".join(f".{e}" for e in sorted(IMAGE_EXTS))
    found = (
        f"it holds {n_others} other file(s), e.g. {', '.join(others)}"
        if n_others
        else "it holds no files (hidden files and documentation aside)"
    )
    if any(o.endswith(".tar") for o in others):
        found += " (for .tar shards, use --input_kind webdataset)"
    raise ValueError(f"input folder {root!r} holds no images ({exts}) anywhere under it: {found}")


def _wire(name: str) -> str | bytes:
    """A file name as it can cross a Beam shuffle: a name that is not UTF-8 (Python reads it with
    its bytes as lone surrogates, which Beam's coder refuses to encode) travels as its bytes."""
    return os.fsencode(name) if printable(name) != name else name


def _unwire(name: str | bytes) -> str:
    return os.fsdecode(name) if isinstance(name, bytes) else name


def _list_wired(root: str, exclude: str | None) -> Iterator[tuple[str | bytes, int | None]]:
    for path, size in _list_local(root, exclude=exclude):
        yield _wire(path), size


class ReadFolder(_Source):
    """Image files under the folder `pattern` (recursively) with their sidecar captions."""

    def read(self, pbegin):
        root = self.root

        def keyed(
            entry: tuple[str | bytes, int | None],
        ) -> Iterator[tuple[str, tuple[str | bytes, str | bytes, str | bytes, int]]]:
            path, size = entry
            path = _unwire(path)
            rel = path[len(root) :].lstrip("/")
            # hidden files, everything under hidden folders, documentation. (A comment after a bare
            # `return` makes Beam warn that the function both yields and returns.)
            if _skipped_in_folder(rel):
                return
            stem, ext = _split_ext(path)
            # grouped by the stem's key, so stems that `slug` maps to one key meet (_FolderGroupFn)
            key = slug(stem[len(root) :].lstrip("/"))
            yield key, (_wire(stem), _wire(ext), _wire(path), size)

        if is_local(root):
            listed = (
                pbegin
                | "Root" >> beam.Create([root])
                | "List" >> beam.FlatMap(_list_wired, self.exclude)
            )
        else:
            listed = (
                pbegin
                | "Match" >> fileio.MatchFiles(self.pattern + "/**")
                | "Entries" >> beam.Map(lambda m: (m.path, m.size_in_bytes))
            )
        return (
            listed
            | "ByKey" >> beam.FlatMap(keyed)
            | "GroupKey" >> beam.GroupByKey()
            | "Records" >> beam.ParDo(_FolderGroupFn(self.root, self.cfg))
        )


MANIFEST_EXTS = ("parquet", "csv", "tsv", "jsonl", "ndjson", "json")
_FORMAT_NAMES = {
    "parquet": "Parquet",
    "csv": "CSV",
    "tsv": "TSV",
    "jsonl": "JSON Lines",
    "ndjson": "JSON Lines",
    "json": "JSON",
}


class ManifestError(ValueError):
    """A manifest file that cannot be used as a whole: unreadable, unparseable, of an unknown format, or
    without the path or caption column. In a job it is one `bad_manifest` reject (other manifests of a
    glob are still read); before the job, when no matched local manifest is usable, it refuses the run
    (a ValueError: one line on the command line, no traceback)."""


# A manifest row's index: its 0-based position among the file's rows (the line of a JSON Lines file,
# blank lines counted; the record after a CSV/TSV header; the item of a JSON array; the Parquet row),
# for rows that parse and rows that do not alike; None for the file as a whole. A row's default key is
# `<manifest stem>_<index, 9 digits>` in every format.
_Ref = int | None
# A parsed row: (index, place, row or None when it does not parse, why it does not parse). `place` is
# where a person finds the row, 1-based, as each format counts: "line 3" (JSON Lines), "row 4 (the
# header is row 1)" (CSV/TSV), "row 3" (Parquet), "item 3" (a JSON array).
_Row = tuple[int, str, dict[str, Any] | None, str]


def _json_rows(path: str, data: bytes, start: int = 0) -> list[_Row]:
    """JSON Lines rows (index: the 0-based line number, from `start`); a line that is not a JSON
    object is a bad row, the others are read."""
    out: list[_Row] = []
    for i, line in enumerate(data.splitlines(), start=start):
        if not line.strip():
            continue
        place = f"line {i + 1}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"the line is a JSON {type(row).__name__}, not an object")
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            out.append((i, place, None, f"{path} {place}: {e}"))
            continue
        out.append((i, place, row, ""))
    return out


def _json_document_rows(path: str, data: bytes) -> list[_Row]:
    """A `.json` manifest: a JSON array of row objects, one object (one row), or JSON Lines (files
    named `.json` often are); a document that parses but is neither is refused, as is a broken array
    (read line by line it would only be a pile of broken rows)."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        if data.lstrip()[:1] == b"[":
            raise ManifestError(
                f"{path}: not valid JSON ({e}); a .json manifest is an array of row objects "
                "or JSON Lines (one object per line, .jsonl)"
            ) from None
        return _json_rows(path, data)  # JSON Lines under a .json name
    if isinstance(doc, dict):
        return [(0, "item 1", doc, "")]
    if not isinstance(doc, list):
        raise ManifestError(
            f"{path}: the JSON document is a {type(doc).__name__}; a .json manifest is an array of "
            "row objects or JSON Lines (one object per line, .jsonl)"
        )
    return [
        (i, f"item {i + 1}", row, "")
        if isinstance(row, dict)
        else (
            i,
            f"item {i + 1}",
            None,
            f"{path} item {i + 1}: a JSON {type(row).__name__}, not an object",
        )
        for i, row in enumerate(doc)
    ]


def _csv_options(ext: str, bad: list | None = None):
    import pyarrow.csv as pacsv

    def skip(row) -> str:  # pyarrow.csv.InvalidRow: a row with the wrong number of fields
        if bad is not None:
            bad.append(row)
        return "skip"

    return pacsv.ParseOptions(
        delimiter="\t" if ext == "tsv" else ",", newlines_in_values=True, invalid_row_handler=skip
    )


def _csv_place(index: int) -> str:
    return f"row {index + 2} (the header is row 1)"


def _table_rows(table: Any) -> list[dict[str, Any]]:
    """A pyarrow table's rows as dicts. A column Python has no value for (a nanosecond timestamp or
    duration that is not a whole microsecond: `datetime` stops at microseconds) is read as its text,
    `2024-01-01 10:00:00.123456789`, instead of failing the whole file."""
    import pyarrow as pa

    columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            columns[name] = column.to_pylist()
        except (ValueError, pa.ArrowException):
            columns[name] = column.cast(_ns_as_text(column.type)).to_pylist()
    return [{name: values[i] for name, values in columns.items()} for i in range(table.num_rows)]


def _ns_as_text(t: Any) -> Any:
    """Arrow type `t` with every nanosecond timestamp, duration or time (also inside lists, maps and
    structs) as text: Python's datetime types stop at microseconds."""
    import pyarrow as pa

    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_time64(t):
        return pa.string() if t.unit == "ns" else t
    if pa.types.is_large_list(t):
        return pa.large_list(_ns_as_text(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_ns_as_text(t.value_type))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_ns_as_text(t.value_type), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(_ns_as_text(t.key_type), _ns_as_text(t.item_type))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_ns_as_text(f.type)) for f in t])
    return t


def _csv_cell(value: Any, column: int, nulls: frozenset[bytes]) -> Any:
    """A path, caption or key cell (`column` 0, 1, 2), read as bytes: UTF-8 text as `str`; otherwise
    a caption keeps its bytes (a `caption_not_utf8` reject for that row alone) and a path or key is
    decoded as a file name is (`os.fsdecode`: a latin-1 path still opens, a key hashes its bytes). A
    key written as a CSV null (`NA`, `null`, ...) is missing: the row gets its default key."""
    if not isinstance(value, bytes):
        return value
    if column == 2 and value in nulls:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value if column == 1 else os.fsdecode(value)


def _csv_rows(
    path: str, ext: str, data: bytes, text_columns: tuple[str, ...] = ()
) -> tuple[list[_Row], list[str]]:
    """CSV/TSV rows and columns; a row with the wrong number of fields (bad quoting) is a bad row.
    Every data row keeps its position after the header (pyarrow numbers the records it skips, the
    header being record 1; the rows it reads fill the other positions in order), so a bad row does not
    move the index, and so the key, of the rows after it.

    `text_columns` (path, caption, key) are read as written (`_csv_cell`): type inference would make a
    caption `2001` a number (a `caption_not_text` reject) and a key `007` the key `7`; they are read
    as bytes, so one cell that is not UTF-8 (a cp1252 export) is that row's problem, not the file's.
    Other columns are typed by pyarrow's inference (numbers, booleans, timestamps, text or bytes)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    def read(bad: list, threads: bool) -> Any:
        return pacsv.read_csv(
            io.BytesIO(data),
            parse_options=_csv_options(ext, bad),
            read_options=pacsv.ReadOptions(use_threads=threads),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(text_columns, pa.binary())
            ),
        )

    bad: list = []
    table = read(bad, True)
    if bad:  # threaded parsing does not number rows: read again on one thread for row numbers
        bad = []
        table = read(bad, False)
    nulls = frozenset(v.encode() for v in pacsv.ConvertOptions().null_values)
    good = _table_rows(table)
    for row in good:
        for i, name in enumerate(text_columns):
            if name in row:
                row[name] = _csv_cell(row[name], i, nulls)
    if all(b.number for b in bad):
        bad_at = [b.number - 2 for b in bad]  # 0-based after the header
    else:  # not numbered (not seen with one thread): after the rows read
        bad_at = list(range(len(good), len(good) + len(bad)))
    taken = set(bad_at)
    free = (i for i in itertools.count() if i not in taken)
    rows: list[_Row] = [(i, _csv_place(i), row, "") for i, row in zip(free, good, strict=False)]
    for i, b in zip(bad_at, bad, strict=True):
        text = b.text if len(b.text) <= 200 else b.text[:200] + "..."
        rows.append(
            (
                i,
                _csv_place(i),
                None,
                f"{path} {_csv_place(i)}: {b.actual_columns} fields where the header has "
                f"{b.expected_columns} (bad quoting or delimiter?): {text!r}",
            )
        )
    rows.sort(key=lambda r: r[0])
    return rows, table.column_names


def _parse_manifest(
    path: str, data: bytes, text_columns: tuple[str, ...] = ()
) -> tuple[list, list[str] | None]:
    """(rows, columns) of a manifest file's bytes: rows are `_Row`s (index, place, row or None,
    bad-row detail); columns are the file's (Parquet, CSV), or None where they are the rows' keys
    (JSON); `text_columns` of a CSV are read as text (see `_csv_rows`). Raises on a file that cannot
    be parsed at all."""
    import pyarrow.parquet as pq

    ext = _split_ext(path)[1]
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows tools) is not data
    if ext in ("jsonl", "ndjson"):
        return _json_rows(path, data), None
    if ext == "json":
        return _json_document_rows(path, data), None
    if ext == "parquet":
        table = pq.read_table(io.BytesIO(data))
        rows = [(i, f"row {i + 1}", row, "") for i, row in enumerate(_table_rows(table))]
        return rows, table.column_names
    if ext in ("csv", "tsv"):
        return _csv_rows(path, ext, data, text_columns)
    raise ManifestError(
        f"{path}: not a manifest format (.{ext}); use .parquet, .csv, .tsv, .jsonl or .json"
    )


def _row_columns(rows: list) -> list[str]:
    """The keys of JSON rows, in order of first appearance."""
    seen: dict[str, None] = {}
    for _, _, row, _ in rows:
        if row is not None:
            seen.update(dict.fromkeys(row))
    return list(seen)


def _missing_columns(path: str, columns: list[str], cfg: IngestConfig) -> str | None:
    """Why a manifest with these columns cannot give records (no path or caption column), or None."""
    missing = [c for c in (cfg.path_field, cfg.caption_field) if c not in columns]
    if not missing:
        return None
    flags = " / ".join(
        f"--ingest.{f}"
        for f, c in (("path_field", cfg.path_field), ("caption_field", cfg.caption_field))
        if c in missing
    )
    names = " or ".join(repr(c) for c in missing)
    has = ", ".join(repr(c) for c in columns) or "none"
    return f"{path}: no column {names} (its columns: {has}); name the columns with {flags}"


def _manifest_error(path: str, e: Exception) -> str:
    """One line naming the file for an error reading or parsing it (pyarrow names a buffer)."""
    if isinstance(e, ManifestError):
        return str(e)
    kind = _FORMAT_NAMES.get(_split_ext(path)[1], "manifest")
    msg = str(e).replace(" '<Buffer>'", "").replace("<Buffer>", "the file")
    return f"{path}: not a readable {kind} file ({type(e).__name__}: {msg})"


class _Item(NamedTuple):
    """(manifest, index, place, row, error) of one manifest row. A NamedTuple, not a tuple: Beam's
    default coder pickles it, while it would encode a tuple's strings as strict UTF-8, and JSON text
    may escape a lone surrogate (`"\\ud83d"`, half an emoji cut by a crawler), which must reach the
    caption rules and the metadata's strict-JSON rule instead of failing the job."""

    manifest: str
    index: _Ref
    place: str
    row: dict[str, Any] | None
    error: tuple[str, str] | None


def _manifest_items(path: str, cfg: IngestConfig) -> Iterator[_Item]:
    """(manifest, index, place, row, error) for every row of a manifest file; a row that does not
    parse is a `bad_manifest_row` item, a file that cannot be used at all is one `bad_manifest` item
    (index None)."""
    try:
        with FileSystems.open(path) as f:
            data = f.read()
        text = (cfg.path_field, cfg.caption_field, cfg.key_field)
        rows, columns = _parse_manifest(path, data, text)
        if columns is None:
            columns = _row_columns(rows)
            check = bool(columns)  # no row parsed: the bad rows say why, not a missing column
        else:
            check = True
        if check and (problem := _missing_columns(path, columns, cfg)):
            raise ManifestError(problem)
    except Exception as e:  # noqa: BLE001 - an unusable manifest is a reject, the glob goes on
        yield _Item(path, None, "", None, ("bad_manifest", _manifest_error(path, e)))
        return
    for index, place, row, err in rows:
        yield _Item(path, index, place, row, None if row is not None else ("bad_manifest_row", err))


def _manifest_problem(path: str, cfg: IngestConfig) -> str | None:
    """Why the local manifest `path` gives no records (unreadable, unparseable, no rows, no path or
    caption column), or None; cheap: Parquet's footer, the first block of a CSV, the JSON Lines up
    to the first row that has both columns (a `.json` document is parsed whole)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    ext = _split_ext(path)[1]
    if ext not in MANIFEST_EXTS:
        return f"{path}: not a manifest format (.{ext}); use .parquet, .csv, .tsv, .jsonl or .json"
    try:
        if ext == "parquet":
            meta = pq.read_metadata(path)
            columns, n = meta.schema.to_arrow_schema().names, meta.num_rows
        elif ext in ("csv", "tsv"):
            bad: list = []
            with pacsv.open_csv(path, parse_options=_csv_options(ext, bad)) as reader:
                columns, n = reader.schema.names, 0
                for batch in reader:
                    n += batch.num_rows
                    if n:
                        break
            if bad and not n:
                return (
                    f"{path}: no row has the header's {bad[0].expected_columns} fields "
                    f"(the first has {bad[0].actual_columns}: {bad[0].text[:200]!r})"
                )
        else:
            if ext == "json":
                with open(path, "rb") as f:
                    rows = _json_document_rows(path, f.read().removeprefix(b"\xef\xbb\xbf"))
            else:
                rows = _json_lines_head(path, cfg)
            columns, n = _row_columns(rows), sum(row is not None for _, _, row, _ in rows)
            if rows and not n:
                return f"{path}: no row is a JSON object (first: {rows[0][3]})"
    except Exception as e:  # noqa: BLE001 - said as the reason the file is refused
        return _manifest_error(path, e)
    if n == 0:
        return f"{path}: holds no rows"
    return _missing_columns(path, columns, cfg)


def _json_lines_head(path: str, cfg: IngestConfig) -> list:
    """The rows of a JSON Lines file up to the first object that, with those before it, names both
    the path and the caption column (usually the first line); all of them when none does."""
    rows: list = []
    seen: set[str] = set()
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if i == 0:
                line = line.removeprefix(b"\xef\xbb\xbf")
            rows += _json_rows(path, line, start=i)
            if rows and rows[-1][2] is not None:
                seen.update(rows[-1][2])
                if cfg.path_field in seen and cfg.caption_field in seen:
                    break
    return rows


def check_manifests(pattern: str, cfg: IngestConfig) -> None:
    """Refuse (ManifestError) a local manifest input of which no file can give a record, before the
    job runs: a single manifest that is unreadable, unparseable, empty or without the path or caption
    column, or a glob none of whose files is usable (files are checked in order up to the first
    usable one, so a glob of many costs one check; the bad ones among them are `bad_manifest`
    rejects in the job)."""
    files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        return  # nothing matched: _literal refused a missing input already; none arrive -> the job says
    first = None
    for path in files:
        problem = _manifest_problem(path, cfg)
        if problem is None:
            return
        first = first or problem
    if len(files) == 1:
        raise ManifestError(f"manifest {first}")
    raise ManifestError(
        f"none of the {len(files)} manifests matching {pattern!r} can be read; the first: {first}"
    )


def _manifest_base(root: str, pattern: str) -> str:
    """The folder manifests' default keys are relative to: the folder of the named file, or of a
    glob's part before its first glob character (`data/*/m.parquet` -> `data`)."""
    if pattern != root or not any(c in root for c in _GLOB_CHARS):
        return posixpath.dirname(root)
    prefix = root[: min(root.index(c) for c in _GLOB_CHARS if c in root)]
    return posixpath.dirname(prefix)


class _ManifestRowFn(beam.DoFn):
    def __init__(self, cfg: IngestConfig, base: str = ""):
        self.cfg = cfg
        self.base = base.rstrip("/")

    def _stem(self, manifest: str) -> str:
        """The default keys' prefix: the manifest's path relative to the input's folder, so rows of
        `a/data.parquet` and `b/data.parquet` (one glob) keep distinct keys (`a_data_000000000`)."""
        rel = (
            manifest[len(self.base) + 1 :]
            if self.base and manifest.startswith(self.base + "/")
            else posixpath.basename(manifest)
        )
        return slug_key(rel)

    def process(self, item: _Item) -> Iterator[RawRecord]:
        manifest, index, place, row, error = item
        stem = self._stem(manifest)
        if index is None:  # the whole file
            default_key, source = f"{stem}_manifest", manifest
        else:  # every row, read or not, in every format: its 0-based index in the file
            default_key, source = f"{stem}_{index:09d}", f"{manifest}#{index}"
        if row is None:
            yield RawRecord(key=default_key, source=source, image=None, caption=None, error=error)
            return
        cfg = self.cfg
        key = row.get(cfg.key_field)
        key = slug(str(key)) if key not in (None, "") else default_key  # a key has no extension
        path = row.get(cfg.path_field)
        caption = row.get(cfg.caption_field)
        # strict JSON (NaN -> null, bytes -> text or base64): see mmdata/core/jsonvalues.py
        metadata = json_safe(
            {
                k: v
                for k, v in row.items()
                if k not in (cfg.path_field, cfg.caption_field, cfg.key_field)
            }
        )

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
            yield record(
                None, ("missing_path", f"{manifest} {place}: no {cfg.path_field!r} in row")
            )
            return
        if isinstance(caption, float) and caption != caption:  # NaN: pandas' missing value
            caption = None
        if caption is not None and not isinstance(caption, (str, bytes)):
            # as for JSON sidecars: a list, number or object is not a caption ("nan", "['a', 'b']")
            kind = type(caption).__name__
            why = f"{manifest} {place}: {cfg.caption_field!r} is a {kind}, not text"
            yield record(None, ("caption_not_text", why))
            return
        # as the row wrote it (a relative one is not made a full path here)
        metadata["path"] = printable(path)
        if is_local(path) and not path.startswith("/"):
            path = FileSystems.join(posixpath.dirname(manifest), path)
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
    """Rows of Parquet/CSV/JSONL/JSON manifests naming image paths and captions."""

    def read(self, pbegin):
        cfg = self.cfg
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Rows" >> beam.FlatMap(lambda meta: _manifest_items(meta.path, cfg))
            | "Spread" >> beam.Reshuffle()
            | "Load" >> beam.ParDo(_ManifestRowFn(cfg, _manifest_base(self.root, self.pattern)))
        )


def _unsafe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":")


# tar member fields already warned about in this process (one warning per field, not per sample)
_warned_unread: set[str] = set()


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
        return {str(r.get("key")): r for r in _table_rows(table) if r.get("key") is not None}

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
                # the sidecar named, not pyarrow's '<Buffer>'
                error=("bad_sidecar", _manifest_error(tar_path[: -len(".tar")] + ".parquet", e)),
            )
            status = {}
        seen_ok: set[str] = set()
        repeats: list[str] = []
        group: dict[str, bytes] = {}
        group_key: str | None = None
        # the sample's member names by field, and members that repeat a field it already has
        names: dict[str, str] = {}
        extras: list[tuple[str, str]] = []

        def flush() -> Iterator[RawRecord]:
            if group_key is None:
                return
            rec = self._record(tar_path, group_key, dict(group), status.get(group_key))
            if group_key in seen_ok:  # the same key twice in one tar: keep the sources distinct
                rec.source += f"#{sum(1 for k in repeats if k == group_key) + 1}"
                repeats.append(group_key)
            seen_ok.add(group_key)
            yield rec
            yield from self._extra_members(tar_path, group_key, group, names, extras)

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
                        group, group_key, names, extras = {}, None, {}, []
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
                        group, group_key, names, extras = {}, None, {}, []
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
                        group, group_key, names, extras = {}, key, {}, []
                    # k.jpg twice, or k.jpg + k.JPG: one field, two members (see _extra_members)
                    if ext.lower() in group:
                        extras.append((name, ext.lower()))
                        continue
                    names[ext.lower()] = name
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

    @staticmethod
    def _extra_members(
        tar_path: str,
        key: str,
        group: dict[str, bytes],
        names: dict[str, str],
        extras: list[tuple[str, str]],
    ) -> Iterator[RawRecord]:
        """Rejects for a sample's members that `_record` does not use: images beside the one it keeps
        (`k.jpg` + `k.png`) and members repeating a field (`k.jpg` twice, `k.jpg` + `k.JPG`).

        A reject, not a second record: a WebDataset key names one sample whose members are its
        fields, and img2dataset writes one image per sample, so a second image is a packing mistake or
        a derived field (a mask, a thumbnail), not a second picture of the caption. The reject names
        the member, so nothing is lost silently and inputs == kept + rejected still holds."""
        images = sorted(e for e in group if e in IMAGE_EXTS)
        kept = names.get(images[0]) if images else None
        for ext in images[1:]:
            yield RawRecord(
                key=key,
                source=f"{tar_path}::{names[ext]}",
                image=None,
                caption=None,
                error=(
                    "extra_image",
                    f"member {names[ext]!r} is a second image of sample {key!r} "
                    f"(one image per sample; {kept!r} was read)",
                ),
            )
        for n, (name, field) in enumerate(extras):
            first = names[field]
            yield RawRecord(
                key=key,
                source=f"{tar_path}::{name}" + (f"#{n + 1}" if name == first else ""),
                image=None,
                caption=None,
                error=(
                    "duplicate_member",
                    f"member {name!r} repeats the field of {first!r} in sample {key!r} "
                    "(the first one was read)",
                ),
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
        # Fields a pair has no place for (a class label `k.cls`, a mask `k.seg.png`): not read, but
        # named in the record's metadata, so the shards say what the source sample also held.
        unread = sorted(
            f for f in members if f not in IMAGE_EXTS and f not in SIDECAR_EXTS and f[:2] != "__"
        )
        if unread:
            metadata["unread_fields"] = unread
            if not _warned_unread.intersection(unread):
                _warned_unread.update(unread)
                log.warning(
                    "%s: sample %r has member(s) with field(s) %s that ingest does not read (one "
                    "image, .txt and .json per sample); they are listed in each record's "
                    "metadata.unread_fields",
                    tar_path,
                    key,
                    unread,
                )
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

    def read(self, pbegin):
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


def read_source(
    path: str, kind: str = "auto", cfg: IngestConfig | None = None, output: str | None = None
) -> beam.PTransform:
    """The reader PTransform for an input path.

    A local path is made absolute first, so records' `source` (and so the shards' bytes) do not depend on
    the directory the job was started from. `output`, the job's dataset folder, is never read as input
    (a folder input's symlinked subfolder may lead to it, where the output checks cannot see it).
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
    # Refuse here, before the output is touched, a local input that can only give an empty dataset
    # (no image in the folder; no usable manifest). Remote inputs are not listed up front: a job that
    # reads nothing from one fails at its end (WriteManifest) instead.
    if kind == "folder":
        if is_local(root):
            check_folder_has_images(root.rstrip("/"))
        return ReadFolder(pattern, cfg, root=root, output=output)
    if kind == "manifest":
        if is_local(root):
            check_manifests(pattern, cfg or IngestConfig())
        return ReadManifest(pattern, cfg, root=root)
    if kind == "webdataset":
        return ReadWebDataset(pattern, cfg, root=root)
    raise ValueError(f"unknown input kind {kind!r}")
