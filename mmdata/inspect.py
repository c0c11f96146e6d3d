"""`mmdata inspect`: a self-contained HTML page of a dataset (samples, counts, rejects)."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from mmdata.errors import parent_folder_problem
from mmdata.io import paths
from mmdata.io.shards import META_SHA

THUMB = 128
MISSING = "missing: the manifest lists it, the dataset has no such file"
REJECTS = "rejects.parquet"
REJECT_COLUMNS = ("key", "stage", "reason", "detail", "source")
NAMED = 10  # shard names the "sha256 checked" line lists before "and N more"


def _thumb(data: bytes) -> str:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        img.thumbnail((THUMB, THUMB))
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    except Exception as e:  # noqa: BLE001 - show the problem on the page instead of failing
        return f'<span class="err">undecodable ({html.escape(type(e).__name__)})</span>'


class _Counting:
    """A read-only stream that counts the bytes read through it (where a damaged shard stops) and,
    given `sha`, hashes them."""

    def __init__(self, f, sha: Any = None):
        self.f = f
        self.pos = 0
        self.sha = sha

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        if self.sha is not None:
            self.sha.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _samples(tar_path: str, limit: int, problems: list[str] | None = None, sha: Any = None):
    """(key, {field: bytes}) per sample, in tar order (the shard is streamed: local or object store).

    A member whose name has no `.` (not `<key>.<field>`) is skipped and described in `problems`. A
    damaged tar raises `tarfile.TarError` (or OSError) after the samples read before the damage; its
    message says at which byte reading stopped. Given `sha` (a hashlib object), the whole file is
    read through it, also past the last sample taken, once reading ends without an error."""
    cur, members = None, {}
    with FileSystems.open(tar_path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        f = _Counting(raw, sha)
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for ti in tar:
                    if not ti.isreg():
                        continue
                    key, dot, field = ti.name.partition(".")
                    if not dot:
                        if problems is not None:
                            problems.append(
                                f"unexpected member {ti.name!r} (not <key>.<field>), skipped"
                            )
                        continue
                    if key != cur:
                        if cur is not None:
                            yield cur, members
                            limit -= 1
                            if limit <= 0:
                                cur = None
                                break
                        cur, members = key, {}
                    members[field] = tar.extractfile(ti).read()
        except tarfile.TarError as err:
            raise tarfile.TarError(f"{err} (after {f.pos} bytes)") from err
        if sha is not None:  # tarfile stops at the end-of-archive block, or we stopped at `limit`
            f.drain()
    if cur is not None:
        yield cur, members


def _sizes(root: str) -> dict[str, int] | None:
    """name -> size of the files directly under `root` (one listing), or None if it cannot be listed."""
    try:
        found = FileSystems.match([paths.join(root, "*")])[0].metadata_list
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a missing local folder
        return None
    prefix = paths.join(root, "")
    return {
        m.path[len(prefix) :]: m.size_in_bytes
        for m in found
        if m.path.startswith(prefix) and "/" not in m.path[len(prefix) :]
    }


def _unreadable(err: Exception) -> str:
    """One line for a Parquet file pyarrow cannot read (it names the file `'<Buffer>'`)."""
    msg = str(err).replace(" '<Buffer>'", "").replace("<Buffer>", "the file").splitlines()
    return f"cannot be read as Parquet: {type(err).__name__}: {msg[0] if msg else ''}"


def _read_rejects(path: str, counted: int) -> tuple[list[dict] | None, list[str]]:
    """(rows of rejects.parquet or None, what is wrong with it): missing while the manifest counts
    rejects, unreadable, without the columns the report shows, or another number of rows."""
    if not paths.exists(path):
        return None, [f"missing; the manifest counts {counted} rejects"] if counted else []
    try:
        table = pq.read_table(io.BytesIO(paths.read_bytes(path)))
    except Exception as err:  # noqa: BLE001 - a damaged file is a Problem on the page, not a failure
        return None, [_unreadable(err)]
    if lacking := sorted(set(REJECT_COLUMNS) - set(table.column_names)):
        return None, [f"has no {', '.join(lacking)} column: not mmdata's rejects file"]
    if table.num_rows != counted:
        return table.to_pylist(), [
            f"holds {table.num_rows} rows, the manifest counts {counted} rejects"
        ]
    return table.to_pylist(), []


def _sidecar_problem(path: str, shard: dict) -> str | None:
    """What is wrong with an existing shard sidecar, or None. Only its footer is read (row count and
    the tar's sha256 the writer put in its metadata), not its rows."""
    try:
        with paths.open_read(path) as f:
            pf = pq.ParquetFile(f)
            rows, meta = pf.metadata.num_rows, pf.schema_arrow.metadata or {}
    except Exception as err:  # noqa: BLE001 - a damaged file is a Problem on the page, not a failure
        return _unreadable(err)
    if isinstance(shard.get("samples"), int) and rows != shard["samples"]:
        return f"holds {rows} rows, the manifest records {shard['samples']} samples"
    recorded, sha = meta.get(META_SHA, b"").decode("utf-8", "replace"), shard.get("sha256")
    if recorded and sha and recorded != sha:
        return f"records the tar's sha256 as {recorded}, the manifest {sha}"
    return None


def _file_sha256(path: str) -> str:
    """sha256 of a file as stored (streamed)."""
    sha = hashlib.sha256()
    with paths.open_read(path) as raw:
        _Counting(raw, sha).drain()
    return sha.hexdigest()


def _hashed_line(shards: list[dict], hashed: list[str]) -> str:
    """Which shards the report compared with their manifest sha256, and which only by size."""
    unrecorded = sum(1 for s in shards if not s.get("sha256"))
    rest = len(shards) - len(hashed) - unrecorded
    if hashed and len(hashed) == len(shards):
        which = f"all {len(shards)} shards" if len(shards) > 1 else hashed[0]
    else:
        which = ", ".join(hashed[:NAMED]) or "no shard"
        if len(hashed) > NAMED:
            which += f" and {len(hashed) - NAMED} more"
    line = f"Shards: sha256 checked against the manifest for {which}"
    if rest:
        line += (
            f"; the other {rest} shard{'s' if rest != 1 else ''} by size only (hashing reads "
            "every byte: the report hashes the shards its samples come from, which it reads anyway)"
        )
    if unrecorded:
        line += f"; {unrecorded} shard{'s have' if unrecorded != 1 else ' has'} no sha256 in the manifest"
    return line + "."


def _report_path(root: str, out: str | Path | None) -> str:
    """Where the report goes: `out`, or `inspect.html` inside it when `out` is an existing folder (or a
    `scheme://` prefix ending in `/`); by default `inspect.html` in the dataset."""
    if not out:
        return paths.join(root, "inspect.html")
    out = str(out)
    if "://" in out:
        return paths.join(out, "inspect.html") if out.endswith("/") else out
    return os.path.join(out, "inspect.html") if os.path.isdir(out) else out


def stage_order(manifest: dict) -> list[str]:
    """The stages of `manifest["counts"]` in pipeline order (its "stages" list), then any others
    alphabetically (the manifest is written with sorted keys, so `counts` itself is alphabetical)."""
    counts = manifest["counts"]
    chain = [s for s in manifest.get("stages") or [] if s in counts]
    return list(dict.fromkeys(chain)) + sorted(set(counts) - set(chain))


class ManifestError(ValueError):
    """A dataset's manifest.json that is not valid JSON or not shaped as mmdata writes it (a
    ValueError: one line on the command line, exit 2). The message names the file and what is wrong."""


_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number"}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return _KINDS.get(type(value), type(value).__name__)


def read_manifest(path: str) -> dict:
    """The manifest at `path`, checked to have what the report reads (fields mmdata's jobs write);
    anything else is a ManifestError naming the file and the field, or line and column for JSON."""
    try:
        m = json.loads(paths.read_text(path))
    except UnicodeDecodeError as err:
        raise ManifestError(
            f"{path} is not UTF-8 text: {err.reason} at byte {err.start + 1}"
        ) from None
    except json.JSONDecodeError as err:
        raise ManifestError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None

    def need(obj: dict, key: str, kind: type, where: str) -> Any:
        name = f"{where}.{key}" if where else key
        if key not in obj:
            raise ManifestError(f"{path} is not an mmdata manifest: {name} is missing")
        return of(obj[key], kind, name)

    def of(value: Any, kind: type, name: str) -> Any:
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise ManifestError(
                f"{path} is not an mmdata manifest: {name} is {_kind(value)}, not {_KINDS[kind]}"
            )
        return value

    of(m, dict, "the top level")
    need(m, "job", str, "")
    need(m, "mmdata_version", str, "")
    totals = need(m, "totals", dict, "")
    need(totals, "samples", int, "totals")
    need(totals, "rejects", int, "totals")
    for i, shard in enumerate(need(m, "shards", list, "")):
        need(of(shard, dict, f"shards[{i}]"), "name", str, f"shards[{i}]")
    for stage, c in need(m, "counts", dict, "").items():
        where = f"counts.{stage}"
        of(c, dict, where)
        need(c, "input", int, where)
        need(c, "kept", int, where)
        need(c, "rejected", dict, where)
    need(m, "tasks", dict, "")
    need(m, "mixture", dict, "")
    if m.get("stages") is not None:
        of(m["stages"], list, "stages")
    return m


def write_report(
    dataset: str | Path, out: str | Path | None = None, max_samples: int = 48, verify: bool = False
) -> str:
    """Write the HTML report of `dataset` (a folder or a `scheme://` prefix); returns its path.

    Damage found (missing or changed shards, sidecars, rejects.parquet) is listed under Problems, one
    line per file, and the report is still written. Every shard's size is compared with the manifest,
    and the sha256 of the shards the samples shown come from (they are read anyway; the rest of the
    last one is read too). `verify` hashes every shard: it reads the whole dataset, which for a big
    one (or an object store) takes as long as copying it."""
    root = str(dataset).rstrip("/") if "://" in str(dataset) else str(dataset)
    manifest_path = paths.join(root, "manifest.json")
    if not paths.exists(manifest_path):
        raise FileNotFoundError(
            f"{root} has no manifest.json: not an mmdata dataset (or the job did not finish)"
        )
    m = read_manifest(manifest_path)
    out_path = _report_path(root, out)
    if problem := parent_folder_problem(out_path):  # before the shards are read, not at the end
        raise NotADirectoryError(f"report {out_path}: {problem}")
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>mmdata: " + e(str(root)) + "</title>",
        "<style>body{font:14px sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{max-width:128px;"
        "background:repeating-conic-gradient(#ddd 0 25%,#fff 0 50%) 0/16px 16px}"
        ".s{display:inline-block;width:300px;margin:6px;padding:6px;border:1px solid #ccc}"
        ".err{color:#b00}.m{color:#06c;font-weight:bold}</style>",
        f"<h1>{e(str(root))}</h1><p>job <b>{e(m['job'])}</b>, mmdata {e(m['mmdata_version'])}, "
        f"{m['totals']['samples']} samples in {len(m['shards'])} shards, {m['totals']['rejects']} rejects</p>",
        "<h2>Per-stage counts</h2><table><tr><th>stage</th><th>input</th><th>kept</th><th>rejected</th></tr>",
    ]
    for stage in stage_order(m):
        c = m["counts"][stage]
        rej = "<br>".join(f"{e(k)}: {v}" for k, v in c["rejected"].items()) or "-"
        parts.append(
            f"<tr><td>{e(stage)}</td><td>{c['input']}</td><td>{c['kept']}</td><td>{rej}</td></tr>"
        )
    parts.append(
        "</table><h2>Tasks and mixture</h2><table><tr><th>task</th><th>samples</th><th>ratio</th></tr>"
    )
    for t, n in m["tasks"].items():
        parts.append(f"<tr><td>{e(t)}</td><td>{n}</td><td>{m['mixture'].get(t, '')}</td></tr>")
    parts.append("</table>")
    problems: list[tuple[str, str]] = []  # (file, what is wrong)
    rows, wrong = _read_rejects(paths.join(root, REJECTS), m["totals"]["rejects"])
    problems += [(REJECTS, what) for what in wrong]
    if rows is not None:
        # str(): a null or non-text stage/reason in a hand-made file still sorts and escapes
        by = Counter((str(r["stage"]), str(r["reason"])) for r in rows)
        parts.append(
            "<h2>Reject reasons</h2><table><tr><th>stage</th><th>reason</th><th>count</th>"
            "<th>examples</th></tr>"
        )
        for (stage, reason), n in sorted(by.items()):
            ex = [r for r in rows if (str(r["stage"]), str(r["reason"])) == (stage, reason)][:3]
            exs = "<br>".join(
                f"{e(str(r['source'] or r['key'] or ''))}: {e(str(r['detail'] or '')[:160])}"
                for r in ex
            )
            parts.append(
                f"<tr><td>{e(stage)}</td><td>{e(reason)}</td><td>{n}</td><td>{exs}</td></tr>"
            )
        parts.append("</table>")
    sizes = _sizes(root)
    resized: set[str] = set()  # shards whose size differs: their sha256 cannot match, not hashed
    for shard in m["shards"]:
        name, sidecar = shard["name"], shard.get("parquet")
        if sizes is not None and name not in sizes:
            problems.append((name, MISSING))
        elif sizes is not None and shard.get("bytes") is not None and sizes[name] != shard["bytes"]:
            resized.add(name)
            problems.append(
                (
                    name,
                    f"{sizes[name]} bytes, the manifest records {shard['bytes']}: truncated or replaced",
                )
            )
        if isinstance(sidecar, str) and sidecar:
            path = paths.join(root, sidecar)
            present = sidecar in sizes if sizes is not None else paths.exists(path)
            if what := _sidecar_problem(path, shard) if present else MISSING:
                problems.append((sidecar, f"sidecar of {name}: {what}"))
    missing = {n for n, what in problems if what == MISSING}
    hashed: list[str] = []  # shards compared with their manifest sha256, in manifest order

    def compare(shard: dict, actual: str) -> None:
        hashed.append(shard["name"])
        if actual != shard["sha256"]:
            problems.append(
                (
                    shard["name"],
                    f"sha256 {actual}, the manifest records {shard['sha256']}: "
                    "changed since it was written",
                )
            )

    samples: list[str] = []
    shown = 0
    for shard in m["shards"]:
        if shown >= max_samples:
            break
        name = shard["name"]
        if name in missing:
            continue
        notes: list[str] = []
        wanted, got = max_samples - shown, 0
        # the shard is read anyway: hashing it costs the rest of it (all of it but for the last one)
        sha = hashlib.sha256() if shard.get("sha256") and name not in resized else None
        try:
            for key, members in _samples(paths.join(root, name), wanted, notes, sha):
                shown += 1
                got += 1
                samples.append(_sample_html(key, members, name, problems))
            if got < wanted and shard.get("samples") not in (None, got):
                notes.append(f"holds {got} samples, the manifest records {shard['samples']}")
            if sha is not None:
                compare(shard, sha.hexdigest())
        except FileNotFoundError:
            problems.append((name, MISSING))
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            problems.append((name, f"cannot be read: {type(err).__name__}: {err}"))
        problems += [(name, n) for n in notes]
    for shard in m["shards"] if verify else []:
        name = shard["name"]
        if name in hashed or name in missing or name in resized or not shard.get("sha256"):
            continue
        try:
            compare(shard, _file_sha256(paths.join(root, name)))
        except FileNotFoundError:
            problems.append((name, MISSING))
        except OSError as err:
            problems.append((name, f"cannot be read: {type(err).__name__}: {err}"))
    if m["shards"]:
        parts.append(f"<p>{e(_hashed_line(m['shards'], hashed))}</p>")
    if problems:
        parts.append(
            "<h2 class='err'>Problems</h2><table><tr><th>file</th><th>problem</th></tr>"
            + "".join(
                f"<tr><td>{e(name)}</td><td class='err'>{e(what)}</td></tr>"
                for name, what in problems
            )
            + "</table>"
        )
    parts.append("<h2>Samples</h2>")
    parts += samples
    paths.write_bytes(out_path, "\n".join(parts).encode("utf-8"), mime_type="text/html")
    return out_path


def _sample_html(
    key: str, members: dict[str, bytes], shard: str, problems: list[tuple[str, str]]
) -> str:
    """One sample's card; a `<key>.json` that is not a JSON object is listed in `problems`."""
    e = html.escape
    try:
        meta = json.loads(members.get("json", b"{}"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        problems.append((shard, f"{key}.json is not valid sample metadata: {err}"))
        meta = {}
    context = [c for c in meta.get("context") or [] if isinstance(c, dict)]
    text = e(str(meta.get("instruction") or meta.get("caption") or ""))
    for c in context:
        marker = e(str(c.get("marker", "")))
        if marker:
            text = text.replace(marker, f"<span class='m'>{marker}</span>")
    imgs = [
        f"<div>target<br>{_thumb(v)}</div>" for f, v in members.items() if f.startswith("target")
    ]
    if not imgs:
        imgs = [
            f"<div>{_thumb(v)}</div>" for f, v in members.items() if f in ("png", "jpg", "webp")
        ]
    for c in context:
        data = members.get(str(c.get("field", "")))
        imgs.append(
            f"<div>{e(str(c.get('marker', '')))} {e(str(c.get('role', '')))}<br>"
            f"{_thumb(data) if data else '(missing)'}"
            f"<br><small>{e(str(c.get('text', '')))}</small></div>"
        )
    return (
        f"<div class='s'><b>{e(key)}</b> {e(str(meta.get('task', '')))}<p>{text}</p>"
        f"<div style='display:flex;gap:4px;flex-wrap:wrap'>{''.join(imgs)}</div></div>"
    )
