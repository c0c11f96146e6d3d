"""`mmdata inspect`: a self-contained HTML page of a dataset (samples, counts, rejects)."""

from __future__ import annotations

import base64
import html
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from mmdata.io import paths

THUMB = 128


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


def _samples(tar_path: str, limit: int):
    """(key, {field: bytes}) per sample, in tar order (the shard is streamed: local or object store)."""
    cur, members = None, {}
    with (
        FileSystems.open(tar_path, compression_type=CompressionTypes.UNCOMPRESSED) as f,
        tarfile.open(fileobj=f, mode="r|") as tar,
    ):
        for ti in tar:
            if not ti.isreg():
                continue
            key, field = ti.name.split(".", 1)
            if key != cur:
                if cur is not None:
                    yield cur, members
                    limit -= 1
                    if limit <= 0:
                        return
                cur, members = key, {}
            members[field] = tar.extractfile(ti).read()
    if cur is not None:
        yield cur, members


def stage_order(manifest: dict) -> list[str]:
    """The stages of `manifest["counts"]` in pipeline order (its "stages" list), then any others
    alphabetically (the manifest is written with sorted keys, so `counts` itself is alphabetical)."""
    counts = manifest["counts"]
    chain = [s for s in manifest.get("stages") or [] if s in counts]
    return list(dict.fromkeys(chain)) + sorted(set(counts) - set(chain))


def write_report(dataset: str | Path, out: str | Path | None = None, max_samples: int = 48) -> str:
    """Write the HTML report of `dataset` (a folder or a `scheme://` prefix); returns its path."""
    root = str(dataset).rstrip("/") if "://" in str(dataset) else str(dataset)
    manifest_path = paths.join(root, "manifest.json")
    if not paths.exists(manifest_path):
        raise FileNotFoundError(
            f"{root} has no manifest.json: not an mmdata dataset (or the job did not finish)"
        )
    m = json.loads(paths.read_text(manifest_path))
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
    rej_path = paths.join(root, "rejects.parquet")
    if paths.exists(rej_path):
        rows = pq.read_table(io.BytesIO(paths.read_bytes(rej_path))).to_pylist()
        by = Counter((r["stage"], r["reason"]) for r in rows)
        parts.append(
            "<h2>Reject reasons</h2><table><tr><th>stage</th><th>reason</th><th>count</th>"
            "<th>examples</th></tr>"
        )
        for (stage, reason), n in sorted(by.items()):
            ex = [r for r in rows if r["stage"] == stage and r["reason"] == reason][:3]
            exs = "<br>".join(f"{e(r['source'] or r['key'])}: {e(r['detail'][:160])}" for r in ex)
            parts.append(
                f"<tr><td>{e(stage)}</td><td>{e(reason)}</td><td>{n}</td><td>{exs}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Samples</h2>")
    shown = 0
    for shard in m["shards"]:
        if shown >= max_samples:
            break
        for key, members in _samples(paths.join(root, shard["name"]), max_samples - shown):
            shown += 1
            meta = json.loads(members.get("json", b"{}"))
            text = e(meta.get("instruction") or meta.get("caption") or "")
            for c in meta.get("context", []):
                text = text.replace(e(c["marker"]), f"<span class='m'>{e(c['marker'])}</span>")
            imgs = [
                f"<div>target<br>{_thumb(v)}</div>"
                for f, v in members.items()
                if f.startswith("target")
            ]
            if not imgs:
                imgs = [
                    f"<div>{_thumb(v)}</div>"
                    for f, v in members.items()
                    if f in ("png", "jpg", "webp")
                ]
            for c in meta.get("context", []):
                data = members.get(c["field"])
                imgs.append(
                    f"<div>{e(c['marker'])} {e(c['role'])}<br>{_thumb(data) if data else '(missing)'}"
                    f"<br><small>{e(c['text'])}</small></div>"
                )
            parts.append(
                f"<div class='s'><b>{e(key)}</b> {e(meta.get('task', ''))}<p>{text}</p>"
                f"<div style='display:flex;gap:4px;flex-wrap:wrap'>{''.join(imgs)}</div></div>"
            )
    out_path = str(out) if out else paths.join(root, "inspect.html")
    paths.write_bytes(out_path, "\n".join(parts).encode("utf-8"), mime_type="text/html")
    return out_path
