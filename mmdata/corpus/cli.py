"""`mmdata corpus ...`: fetch the npm sources and build image corpora from them.

    mmdata corpus fetch   --sources .cache/npm [--all-sets]
    mmdata corpus emoji   --sources .cache/npm --out out/corpus --sets noto,twemoji,openmoji
    mmdata corpus icons   --sources .cache/npm --out out/corpus [--sets ...] [--limit N]
    mmdata corpus photos  --out out/corpus
    mmdata corpus sample  --sources .cache/npm --out mmdata/sample_corpus --overwrite

Only ``fetch`` uses the network (the npm registry); the builders read the ``--sources`` folder.
Every build rewrites ``index.jsonl`` and ``LICENSE.md`` at the root of ``--out`` from all the
sidecars there, so several builds can share one output folder.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
from pathlib import Path

from mmdata.corpus import build, sample, sources
from mmdata.errors import print_error
from mmdata.flags import accept_underscores

log = logging.getLogger(__name__)

DEFAULT_EMOJI_SETS = ",".join(sample.SampleRecipe().emoji_sets)
DEFAULT_MIN_STYLES = 3  # lowered to the number of --sets when fewer are given


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


_SET_PREFIX = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")  # Iconify set prefixes: "fluent-emoji-flat"


def _sets(value: str) -> list[str]:
    """argparse type of --sets: a non-empty comma list of Iconify set prefixes, duplicates dropped."""
    names = list(dict.fromkeys(_csv(value)))
    if not names:
        raise argparse.ArgumentTypeError(f"expected a comma list of icon set names, got {value!r}")
    if bad := [n for n in names if not _SET_PREFIX.match(n)]:
        raise argparse.ArgumentTypeError(
            f"not an icon set name: {', '.join(map(repr, bad))} (names look like 'fluent-emoji-flat')"
        )
    return names


def _int_at_least(minimum: int):
    """argparse type: an integer >= `minimum`; anything else is a usage error (exit status 2)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {n}")
        return n

    parse.__name__ = f"integer >= {minimum}"
    return parse


_positive = _int_at_least(1)


def _add_common(p: argparse.ArgumentParser, needs_sources: bool = True) -> None:
    if needs_sources:
        p.add_argument(
            "--sources",
            type=Path,
            default=sources.DEFAULT_SOURCES_DIR,
            help="npm prefix folder holding the icon packages (default: %(default)s)",
        )
    p.add_argument("--out", type=Path, required=True, help="output folder (folder-tree corpus)")


def _add_render(p: argparse.ArgumentParser, size: int) -> None:
    p.add_argument("--size", type=_positive, default=size, help="square side in px (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (%(default)s)")
    p.add_argument("--workers", type=_positive, default=1, help="render processes (%(default)s)")
    p.add_argument(
        "--optimize-png",
        action="store_true",
        help="smallest PNGs (zlib level 9): ~10%% fewer bytes, ~7x slower encoding",
    )
    p.add_argument(
        "--license",
        dest="licenses",
        type=_csv,
        action="extend",
        default=None,
        help="licence SPDX ids to allow on top of the defaults (comma list, repeatable); "
        f"defaults: {','.join(sources.DEFAULT_LICENSES)}",
    )


def _licenses(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(sources.DEFAULT_LICENSES) + tuple(args.licenses or ())


def _done(report: build.BuildReport, out: Path, nothing: str = "") -> int:
    print(report.summary())
    if report.written == 0:
        print_error("corpus", f"nothing written to {out}{nothing}")
        return 1
    items = build.finalize(out)
    print(f"{out} now holds {len(items)} images; index.jsonl and LICENSE.md rewritten")
    return 0


def _check_out(out: Path) -> str | None:
    """Why ``out`` cannot be an output folder, or None."""
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                return f"--out {out}: {parent} is not a folder"
            return None
    return None


def _run_fetch(args: argparse.Namespace, beam_args: list[str]) -> int:
    try:
        sources.fetch_sources(args.sources, all_sets=args.all_sets)
    except RuntimeError as e:  # npm missing
        print_error("corpus", e)
        return 2
    except subprocess.CalledProcessError as e:
        print_error(
            "corpus",
            f"npm install failed (exit status {e.returncode}); its output is above. "
            "It needs the npm registry (network).",
        )
        return 1
    print(f"installed into {args.sources}: {' '.join(sources.pinned_packages(args.all_sets))}")
    return 0


def _run_emoji(args: argparse.Namespace, beam_args: list[str]) -> int:
    if args.min_styles is not None and args.min_styles > len(args.sets):
        print_error(
            "corpus",
            f"--min-styles {args.min_styles} is more than the {len(args.sets)} "
            f"set(s) of --sets ({','.join(args.sets)})",
        )
        return 2
    min_styles = args.min_styles if args.min_styles is not None else DEFAULT_MIN_STYLES
    report = build.build_emoji(
        args.sources,
        args.out,
        args.sets,
        size=args.size,
        max_subjects=args.max_subjects,
        min_styles=min(min_styles, len(args.sets)),
        seed=args.seed,
        include_skin_tones=args.include_skin_tones,
        exclude_categories=args.exclude_categories,
        licenses=_licenses(args),
        workers=args.workers,
        optimize_png=args.optimize_png,
    )
    return _done(
        report,
        args.out,
        f": no emoji subject is in {min(min_styles, len(args.sets))} of the sets "
        f"{','.join(args.sets)}"
        + (" outside the excluded categories" if args.exclude_categories else ""),
    )


def _run_icons(args: argparse.Namespace, beam_args: list[str]) -> int:
    report = build.build_icons(
        args.sources,
        args.out,
        args.sets,
        size=args.size,
        limit=args.limit,
        per_set_limit=args.per_set_limit,
        seed=args.seed,
        skip_numbered=args.skip_numbered,
        licenses=_licenses(args),
        workers=args.workers,
        optimize_png=args.optimize_png,
    )
    return _done(report, args.out, ": no icon was rendered (skipped ones are counted above)")


def _run_photos(args: argparse.Namespace, beam_args: list[str]) -> int:
    return _done(build.build_photos(args.out, max_side=args.max_side), args.out)


def _run_sample(args: argparse.Namespace, beam_args: list[str]) -> int:
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            print_error("corpus", f"{out} is not empty; pass --overwrite")
            return 2
        build.clear_outputs(out)
    report = sample.build_sample(args.sources, out)
    print(report.summary())
    return 0


def _guard(func):
    """Check --out up front; turn a missing-sources error into a one-line message and exit code 2."""

    def run(args: argparse.Namespace, beam_args: list[str]) -> int:
        if problem := _check_out(args.out):
            print_error("corpus", problem)
            return 2
        try:
            return func(args, beam_args)
        except sources.SourcesNotFoundError as e:
            print_error("corpus", e)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mmdata corpus {fetch,emoji,icons,photos,sample}``."""
    corpus = subparsers.add_parser(
        "corpus",
        help="fetch icon/emoji packages and build image corpora (folder tree + sidecars)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = corpus.add_subparsers(dest="corpus_command", metavar="<what>")
    sub.required = True

    p = sub.add_parser("fetch", help="npm install the pinned icon packages (network: npm)")
    p.add_argument("--sources", type=Path, default=sources.DEFAULT_SOURCES_DIR)
    p.add_argument(
        "--all-sets",
        action="store_true",
        help=f"also install {sources.ALL_SETS_PACKAGE[0]} (all ~390k icons, ~465 MB unpacked)",
    )
    p.set_defaults(func=_run_fetch)

    p = sub.add_parser("emoji", help="the same emoji in several emoji sets (styles)")
    _add_common(p)
    _add_render(p, size=128)
    p.add_argument(
        "--sets",
        type=_sets,
        default=_csv(DEFAULT_EMOJI_SETS),
        help=f"emoji sets, in priority order (default: {DEFAULT_EMOJI_SETS})",
    )
    p.add_argument("--max-subjects", type=_positive, default=None, help="seeded sample of subjects")
    p.add_argument(
        "--min-styles",
        type=_positive,
        default=None,
        help=f"styles a subject needs (default: {DEFAULT_MIN_STYLES}, or the number of --sets "
        "if fewer)",
    )
    p.add_argument("--include-skin-tones", action="store_true", help="keep skin-tone variants")
    p.add_argument(
        "--exclude-categories",
        type=_csv,
        default=[],
        help="comma list of categories to leave out, e.g. Flags,Symbols",
    )
    p.set_defaults(func=_guard(_run_emoji))

    p = sub.add_parser("icons", help="named icons from icon sets (or all of @iconify/json)")
    _add_common(p)
    _add_render(p, size=64)
    p.add_argument(
        "--sets",
        type=_sets,
        default=None,
        help="icon sets (default: every set under --sources with an allowed licence)",
    )
    p.add_argument("--limit", type=_positive, default=None, help="seeded sample of N icons overall")
    p.add_argument("--per-set-limit", type=_positive, default=None, help="seeded sample per set")
    p.add_argument(
        "--skip-numbered", action="store_true", help="drop variant names like 'abstract-001'"
    )
    p.set_defaults(func=_guard(_run_icons))

    p = sub.add_parser("photos", help="scikit-image's bundled photos (no network)")
    _add_common(p, needs_sources=False)
    p.add_argument("--max-side", type=_positive, default=256, help="long side in px (%(default)s)")
    p.set_defaults(func=_guard(_run_photos))

    p = sub.add_parser("sample", help="rebuild the bundled sample corpus recipe")
    _add_common(p)
    p.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    p.set_defaults(func=_guard(_run_sample))
    accept_underscores(corpus)
