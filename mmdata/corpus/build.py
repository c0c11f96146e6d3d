"""Building image corpora in the folder-tree format that the ingest reads.

Layout written under ``out``::

    <group>/<style>/<name>.png    RGBA emoji/icons (square, transparent) or RGB/L photos
    <group>/<style>/<name>.json   sidecar: caption, subject, style, source, licence, ...
    index.jsonl                   one line per image: {"path": ..., **sidecar}, sorted by path
    LICENSE.md                    attribution: every source, version, licence and image count

``group`` is ``emoji``, ``icons`` or ``photos``. File stems contain no dots. A ``subject`` id is
shared by every image of the same thing ("emoji:rocket" in each emoji style), so subject-driven
and style tasks can group images. Selection is sorted and seeded: the same sources and arguments
give the same bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmdata.corpus import captions
from mmdata.corpus.iconify import IconData, IconSet
from mmdata.corpus.photos import PHOTOS, Photo
from mmdata.corpus.render import EmptyRenderError, encode_png, render_icon, resize_long_side
from mmdata.corpus.sources import DEFAULT_LICENSES, available_sets, load_set

log = logging.getLogger(__name__)

INDEX_FILE = "index.jsonl"
LICENSE_FILE = "LICENSE.md"
README_FILE = "README.md"
GROUPS = ("emoji", "icons", "photos")
ICON_COLOR = "#000000"  # what `currentColor` becomes in monochrome sets
RENDER_CHUNK = 32  # most jobs per worker task


@dataclasses.dataclass(frozen=True)
class RenderJob:
    """One icon to render and where it goes."""

    relpath: str  # "emoji/noto/rocket.png"
    icon: IconData
    size: int
    meta: dict[str, Any]


@dataclasses.dataclass
class BuildReport:
    """What a build wrote and what it skipped, by reason (nothing is dropped silently)."""

    written: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    by_style: Counter = dataclasses.field(default_factory=Counter)

    def merge(self, other: BuildReport) -> None:
        self.written += other.written
        self.skipped.update(other.skipped)
        self.by_style.update(other.by_style)

    def summary(self) -> str:
        styles = ", ".join(f"{k}={v}" for k, v in sorted(self.by_style.items()))
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"wrote {self.written} images ({styles}); skipped: {skipped}"


# ----------------------------------------------------------------------------------------------
# Selection (pure)


def check_licenses(sets: Iterable[IconSet], allowed: Sequence[str]) -> None:
    """Refuse sets whose licence is not in ``allowed`` (e.g. non-commercial sets)."""
    bad = [
        f"{s.prefix} ({s.info.license_spdx or 'unknown'})"
        for s in sets
        if s.info.license_spdx not in allowed
    ]
    if bad:
        raise ValueError(
            f"licence not allowed for: {', '.join(bad)}; allowed: {', '.join(allowed)} "
            "(pass --license to extend the list)"
        )


def _icon_meta(
    iconset: IconSet, name: str, group: str, medium: str, subject_name: str
) -> dict[str, Any]:
    info = iconset.info
    return {
        "caption": captions.caption_for(subject_name, medium),
        "styled_caption": captions.styled_caption_for(subject_name, medium, info.name),
        "subject": f"{medium}:{subject_name}",
        "subject_name": captions.subject_phrase(subject_name),
        "group": group,
        "style": info.prefix,
        "style_name": info.name,
        "name": subject_name,
        "source_name": name,  # the icon's name inside its set (may differ: "babychick")
        "category": iconset.category(name),
        "codepoints": iconset.codepoints(name),
        "source": info.source,
        "license": info.license_spdx,
        "license_url": info.license_url,
        "author": info.author,
        # The set's project page, shared by all its icons: not a per-image `url`, which
        # dedup stages may treat as an identity.
        "project_url": info.author_url,
    }


def plan_emoji(
    sets: Sequence[IconSet],
    size: int,
    max_subjects: int | None = None,
    min_styles: int = 3,
    seed: int = 0,
    include_skin_tones: bool = False,
    exclude_categories: Sequence[str] = (),
    subjects: Sequence[str] | None = None,
) -> list[RenderJob]:
    """Choose emoji subjects present in at least ``min_styles`` of ``sets`` and plan their renders.

    Subjects are icon names matched across sets (directly, through an alias, or ignoring hyphens).
    Within one set no icon is used twice. With ``max_subjects``, a seeded sample of the eligible
    subjects is taken; ``subjects`` picks them by name instead.

    Returns:
        Jobs sorted by subject then by the order of ``sets``.
    """
    candidates: set[str] = set()
    for s in sets:
        candidates.update(s.icon_names())
    if not include_skin_tones:
        candidates = {n for n in candidates if not captions.is_skin_tone_variant(n)}
    by_prefix = {s.prefix: s for s in sets}
    used: dict[str, set[str]] = defaultdict(set)  # prefix -> canonical icons already taken
    matches: dict[str, dict[str, str]] = {}
    for name in sorted(candidates):
        found: dict[str, str] = {}
        for s in sets:
            hit = s.lookup(name, loose=True)
            if hit is None or s.is_hidden(hit):
                continue
            canon = s.canonical(hit)
            if canon in used[s.prefix]:
                continue
            found[s.prefix] = hit
        if len(found) >= min_styles:
            matches[name] = found
            for prefix, hit in found.items():
                used[prefix].add(by_prefix[prefix].canonical(hit))

    def category(name: str) -> str | None:
        for s in sets:
            if s.prefix in matches[name]:
                cat = s.category(matches[name][s.prefix])
                if cat:
                    return cat
        return None

    excluded = {c.lower() for c in exclude_categories}
    eligible = sorted(n for n in matches if (category(n) or "").lower() not in excluded)
    if subjects is not None:
        missing = sorted(set(subjects) - set(eligible))
        if missing:
            raise ValueError(f"subjects not in >= {min_styles} styles: {', '.join(missing)}")
        chosen = sorted(set(subjects))
    elif max_subjects is not None and len(eligible) > max_subjects:
        chosen = sorted(random.Random(seed).sample(eligible, max_subjects))
    else:
        chosen = eligible
    jobs: list[RenderJob] = []
    for name in chosen:
        cat = category(name)
        codepoints = next(
            (s.codepoints(matches[name][s.prefix]) for s in sets if s.prefix in matches[name]),
            None,
        )
        for s in sets:
            hit = matches[name].get(s.prefix)
            if hit is None:
                continue
            meta = _icon_meta(s, hit, "emoji", "emoji", name)
            meta["category"] = cat
            meta["codepoints"] = s.codepoints(hit) or codepoints
            jobs.append(RenderJob(f"emoji/{s.prefix}/{name}.png", s.resolve(hit), size, meta))
    return jobs


def choose_icons(
    names_by_set: dict[str, list[str]],
    limit: int | None = None,
    per_set_limit: int | None = None,
    seed: int = 0,
    skip_numbered: bool = False,
) -> dict[str, list[str]]:
    """Pick named icons: optional per-set then overall seeded samples; sorted output."""
    picked: list[tuple[str, str]] = []
    for prefix in sorted(names_by_set):
        names = sorted(names_by_set[prefix])
        if skip_numbered:
            names = [n for n in names if not captions.is_numbered(n)]
        if per_set_limit is not None and len(names) > per_set_limit:
            names = sorted(random.Random(f"{seed}:{prefix}").sample(names, per_set_limit))
        picked.extend((prefix, n) for n in names)
    if limit is not None and len(picked) > limit:
        picked = sorted(random.Random(seed).sample(picked, limit))
    out: dict[str, list[str]] = defaultdict(list)
    for prefix, name in picked:
        out[prefix].append(name)
    return dict(out)


def plan_icons(iconset: IconSet, names: Sequence[str], size: int) -> list[RenderJob]:
    """Render jobs for named icons of one set; the subject is the icon name."""
    return [
        RenderJob(
            f"icons/{iconset.prefix}/{name}.png",
            iconset.resolve(name),
            size,
            _icon_meta(iconset, name, "icons", "icon", name),
        )
        for name in sorted(names)
    ]


# ----------------------------------------------------------------------------------------------
# Rendering and writing


def _render_job(job: RenderJob, optimize: bool = False) -> tuple[str, bytes | None, str | None]:
    """Worker: (relpath, png bytes or None, skip reason or None)."""
    try:
        image = render_icon(job.icon, job.size, color=ICON_COLOR)
    except EmptyRenderError:
        return job.relpath, None, "empty_render"
    except ValueError as e:
        log.warning("render failed for %s: %s", job.relpath, e)
        return job.relpath, None, "render_error"
    return job.relpath, encode_png(image, optimize=optimize), None


def write_item(out: Path, relpath: str, png: bytes, meta: dict[str, Any]) -> None:
    """Write ``relpath`` and its same-stem ``.json`` sidecar."""
    path = out / relpath
    if "." in path.stem:
        raise ValueError(f"file stems must not contain dots: {relpath}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    path.with_suffix(".json").write_text(
        json.dumps(meta, sort_keys=True, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def run_jobs(
    jobs: Sequence[RenderJob], out: Path, workers: int = 1, optimize_png: bool = False
) -> BuildReport:
    """Render and write ``jobs``; output order and bytes do not depend on ``workers``."""
    report = BuildReport()
    meta_by_path = {j.relpath: j.meta for j in jobs}
    render = functools.partial(_render_job, optimize=optimize_png)
    if workers > 1 and len(jobs) > workers:
        chunk = max(1, min(RENDER_CHUNK, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results: Iterable = pool.map(render, jobs, chunksize=chunk)
            _write_results(results, meta_by_path, out, report)
    else:
        _write_results(map(render, jobs), meta_by_path, out, report)
    return report


def _write_results(
    results: Iterable[tuple[str, bytes | None, str | None]],
    meta_by_path: dict[str, dict[str, Any]],
    out: Path,
    report: BuildReport,
) -> None:
    for relpath, png, reason in results:
        meta = meta_by_path[relpath]
        if png is None:
            report.skipped[reason or "unknown"] += 1
            continue
        meta = {**meta, "width": int(_png_size(png)[0]), "height": int(_png_size(png)[1])}
        write_item(out, relpath, png, meta)
        report.written += 1
        report.by_style[f"{meta['group']}/{meta['style']}"] += 1


def _png_size(png: bytes) -> tuple[int, int]:
    # IHDR: width and height are big-endian uint32 at bytes 16..24.
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


# ----------------------------------------------------------------------------------------------
# Builders


def build_emoji(
    sources: Path,
    out: Path,
    sets: Sequence[str],
    size: int = 128,
    max_subjects: int | None = None,
    min_styles: int = 3,
    seed: int = 0,
    include_skin_tones: bool = False,
    exclude_categories: Sequence[str] = (),
    subjects: Sequence[str] | None = None,
    licenses: Sequence[str] = DEFAULT_LICENSES,
    workers: int = 1,
    optimize_png: bool = False,
) -> BuildReport:
    """Render the same emoji subjects in several emoji sets (styles).

    A set named twice counts once (twice, a subject matched only one of its copies and missed
    ``min_styles``)."""
    loaded = [load_set(sources, p) for p in dict.fromkeys(sets)]
    check_licenses(loaded, licenses)
    jobs = plan_emoji(
        loaded,
        size,
        max_subjects=max_subjects,
        min_styles=min(min_styles, len(loaded)),
        seed=seed,
        include_skin_tones=include_skin_tones,
        exclude_categories=exclude_categories,
        subjects=subjects,
    )
    log.info("emoji: %d renders of %d subjects", len(jobs), len({j.meta["name"] for j in jobs}))
    return run_jobs(jobs, out, workers, optimize_png)


def build_icons(
    sources: Path,
    out: Path,
    sets: Sequence[str] | None = None,
    size: int = 64,
    limit: int | None = None,
    per_set_limit: int | None = None,
    seed: int = 0,
    skip_numbered: bool = False,
    licenses: Sequence[str] = DEFAULT_LICENSES,
    workers: int = 1,
    optimize_png: bool = False,
) -> BuildReport:
    """Render named icons; ``sets=None`` means every set under ``sources`` with an allowed licence.

    Sets are loaded one at a time, so all ~390k icons of ``@iconify/json`` fit in memory.
    """
    report = BuildReport()
    explicit = sets is not None
    names_by_set: dict[str, list[str]] = {}
    for prefix in dict.fromkeys(sets) if explicit else available_sets(sources):
        iconset = load_set(sources, prefix)
        if iconset.info.license_spdx not in licenses:
            if explicit:
                check_licenses([iconset], licenses)
            log.info("skipping set %s: licence %s", prefix, iconset.info.license_spdx or "?")
            report.skipped[f"licence_{iconset.info.license_spdx or 'unknown'}"] += len(
                iconset.icon_names()
            )
            continue
        names_by_set[prefix] = iconset.icon_names()
    chosen = choose_icons(names_by_set, limit, per_set_limit, seed, skip_numbered)
    for prefix in sorted(chosen):
        jobs = plan_icons(load_set(sources, prefix), chosen[prefix], size)
        report.merge(run_jobs(jobs, out, workers, optimize_png))
        log.info("icons: %s done (%d so far)", prefix, report.written)
    return report


def _photo_array(photo: Photo) -> np.ndarray:
    from skimage import data  # imported here: only the photo builder needs it

    return getattr(data, photo.name)()


def build_photos(out: Path, max_side: int = 256, names: Sequence[str] | None = None) -> BuildReport:
    """Copy scikit-image's bundled photos, downscaled so the long side is <= ``max_side``."""
    import skimage

    report = BuildReport()
    wanted = set(names) if names is not None else None
    for photo in PHOTOS:
        if wanted is not None and photo.name not in wanted:
            continue
        array = _photo_array(photo)
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        image = resize_long_side(Image.fromarray(array), max_side)
        stem = photo.name.replace("_", "-")
        meta = {
            "caption": photo.caption,
            "subject": f"photo:{stem}",
            "subject_name": stem.replace("-", " "),
            "group": "photos",
            "style": "photo",
            "style_name": "photograph",
            "name": stem,
            "source_name": f"skimage.data.{photo.name}",
            "source": f"pypi:scikit-image@{skimage.__version__}",
            "license": photo.license,
            "license_note": photo.license_note,
            "url": photo.url,
            "mode": image.mode,
            "width": image.width,
            "height": image.height,
        }
        write_item(out, f"photos/skimage/{stem}.png", encode_png(image), meta)
        report.written += 1
        report.by_style["photos/skimage"] += 1
    return report


# ----------------------------------------------------------------------------------------------
# Index and attribution


def read_items(out: Path) -> list[dict[str, Any]]:
    """Every image under ``out`` with its sidecar, as ``{"path": relpath, **sidecar}``, sorted.

    Only the builders' own folders (``emoji/``, ``icons/``, ``photos/``) are read, so other files in
    ``out`` do not end up in the index."""
    items = []
    sidecars = (s for group in GROUPS for s in (out / group).glob("*/*.json"))
    for sidecar in sorted(sidecars):  # Path order (by parts), as the committed index has it
        image = sidecar.with_suffix(".png")
        if not image.is_file():
            continue
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        items.append({"path": image.relative_to(out).as_posix(), **meta})
    return items


def write_index(out: Path, items: Sequence[dict[str, Any]]) -> None:
    lines = [json.dumps(item, sort_keys=True, ensure_ascii=False) for item in items]
    (out / INDEX_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def license_markdown(items: Sequence[dict[str, Any]]) -> str:
    """The attribution file: each source with version, author, licence and image counts."""
    by_source: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in items:
        by_source[item["source"]].append(item)
    lines = [
        "# Licences and attribution",
        "",
        "Every image in this folder was rendered or copied from the open packages below; each",
        "image's sidecar `.json` repeats its `source`, `license` and `project_url` (photos: `url`).",
        "Icons and emoji were",
        "rasterised from their SVG sources with resvg and padded to a square transparent canvas",
        "(an adaptation of the original artwork). Material under CC BY is attributed here;",
        "material under CC BY-SA is shared under the same licence.",
        "",
        "| source | set | author | licence | images |",
        "|---|---|---|---|---|",
    ]
    photo_sources = []
    for source in sorted(by_source):
        group = by_source[source]
        if all(i["group"] == "photos" for i in group):
            photo_sources.append(source)
            continue
        first = group[0]
        license_cell = first["license"]
        if first.get("license_url"):
            license_cell = f"[{first['license']}]({first['license_url']})"
        author = first.get("author") or "?"
        if first.get("project_url"):
            author = f"[{author}]({first['project_url']})"
        lines.append(
            f"| `{source}` | {first['style_name']} (`{first['style']}`) | {author} | "
            f"{license_cell} | {len(group)} |"
        )
    for source in photo_sources:
        lines += [
            "",
            f"## Photos from `{source}` (`skimage.data`)",
            "",
            "| image | licence | note | original |",
            "|---|---|---|---|",
        ]
        for item in sorted(by_source[source], key=lambda i: i["path"]):
            lines.append(
                f"| `{item['path']}` | {item['license']} | {item['license_note']} | {item['url']} |"
            )
    counts = Counter(i["group"] for i in items)
    lines += [
        "",
        "Totals: "
        + ", ".join(f"{g} {counts[g]}" for g in GROUPS if counts[g])
        + f"; all {len(items)}.",
        "",
    ]
    return "\n".join(lines)


def finalize(out: Path) -> list[dict[str, Any]]:
    """(Re)write ``index.jsonl`` and ``LICENSE.md`` from every sidecar under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    items = read_items(out)
    write_index(out, items)
    (out / LICENSE_FILE).write_text(license_markdown(items), encoding="utf-8")
    return items


def clear_outputs(out: Path) -> None:
    """Remove what a previous build wrote (the three group folders and the generated files)."""
    import shutil

    for group in GROUPS:
        if (out / group).is_dir():
            shutil.rmtree(out / group)
    for name in (INDEX_FILE, LICENSE_FILE, README_FILE):
        (out / name).unlink(missing_ok=True)
