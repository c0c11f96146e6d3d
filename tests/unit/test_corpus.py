"""The corpus builder (`mmdata corpus`) and the committed sample corpus.

The npm cache does not exist on a fresh machine, so builder tests write tiny Iconify packages in
the same layout npm produces and build from those; rendering is real (resvg).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdata.corpus import build, captions, sources
from mmdata.corpus import cli as corpus_cli
from mmdata.corpus.iconify import IconSet, IconSetInfo
from mmdata.corpus.render import render_icon
from mmdata.corpus.sample import REBUILD_COMMAND, SAMPLE_CORPUS_DIR, SampleRecipe

SIZE = 32

# Shapes on a 16x16 box: distinct, so each style renders differently.
CIRCLE = '<circle cx="8" cy="8" r="6" fill="{c}"/>'
SQUARE = '<rect x="3" y="3" width="10" height="10" fill="{c}"/>'
LEFT_HALF = '<rect x="0" y="0" width="8" height="16" fill="{c}"/>'
TOP_HALF = '<rect x="0" y="0" width="16" height="8" fill="{c}"/>'
MONO = '<path d="M2 2h12v12H2z" fill="currentColor"/>'


def _write_package(
    root: Path,
    prefix: str,
    icons: dict,
    license_spdx: str = "MIT",
    aliases: dict | None = None,
    chars: dict | None = None,
    categories: dict | None = None,
    version: str = "1.0.0",
) -> None:
    d = root / "node_modules" / "@iconify-json" / prefix
    d.mkdir(parents=True)
    data = {"prefix": prefix, "icons": icons, "width": 16, "height": 16}
    if aliases:
        data["aliases"] = aliases
    (d / "icons.json").write_text(json.dumps(data))
    info = {
        "prefix": prefix,
        "name": f"{prefix.title()} Set",
        "author": {"name": f"{prefix} authors", "url": f"https://example.org/{prefix}"},
        "license": {"title": license_spdx, "spdx": license_spdx, "url": "https://example.org/l"},
    }
    (d / "info.json").write_text(json.dumps(info))
    (d / "package.json").write_text(
        json.dumps({"name": f"@iconify-json/{prefix}", "version": version})
    )
    if chars:
        (d / "chars.json").write_text(json.dumps(chars))
    if categories:
        (d / "metadata.json").write_text(json.dumps({"categories": categories}))


@pytest.fixture
def npm_sources(tmp_path: Path) -> Path:
    """Three emoji-like sets sharing subjects, one icon set, one non-commercial set."""
    root = tmp_path / "npm"
    _write_package(
        root,
        "alpha",
        {
            "rocket": {"body": CIRCLE.format(c="#e33")},
            "red-apple": {"body": SQUARE.format(c="#c00")},
            "waving-hand": {"body": CIRCLE.format(c="#fc0")},
            "waving-hand-dark-skin-tone": {"body": CIRCLE.format(c="#630")},
            "only-alpha": {"body": SQUARE.format(c="#00f")},
            "flag-chile": {"body": SQUARE.format(c="#00f")},
        },
        chars={"1f680": "rocket", "1f34e": "red-apple"},
        categories={
            "Travel & Places": ["rocket"],
            "Food & Drink": ["red-apple"],
            "Flags": ["flag-chile"],
        },
    )
    _write_package(
        root,
        "beta",
        {
            # names without hyphens, matched loosely ("redapple" -> "red-apple")
            "rocket": {"body": SQUARE.format(c="#3a3")},
            "redapple": {"body": CIRCLE.format(c="#a00")},
            "wavinghand": {"body": SQUARE.format(c="#fa0")},
            "flag-chile": {"body": CIRCLE.format(c="#00f")},
        },
        license_spdx="CC-BY-4.0",
    )
    _write_package(
        root,
        "gamma",
        {
            "space-rocket": {"body": MONO},  # drawn with currentColor
            "apple-red": {"body": LEFT_HALF.format(c="#b00")},
            "waving-hand": {"body": TOP_HALF.format(c="#ff0"), "hidden": True},
            "flag-chile": {"body": TOP_HALF.format(c="#00f")},
        },
        license_spdx="Apache-2.0",
        aliases={
            "rocket": {"parent": "space-rocket"},
            "red-apple": {"parent": "apple-red", "hFlip": True},
        },
    )
    _write_package(
        root,
        "tools",
        {
            "hammer": {"body": LEFT_HALF.format(c="#555")},
            "saw": {"body": TOP_HALF.format(c="#777")},
            "wrench": {"body": MONO},
            "nail-1": {"body": SQUARE.format(c="#999")},
            "nail-2": {"body": CIRCLE.format(c="#999")},
            "blank": {"body": '<g fill="none"/>'},
        },
        license_spdx="CC0-1.0",
    )
    _write_package(
        root, "noncommercial", {"rocket": {"body": CIRCLE.format(c="#000")}}, "CC-BY-NC-4.0"
    )
    return root


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _alpha(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"))[..., 3]


# ----------------------------------------------------------------------------------------------
# Iconify parsing and rendering


def _set(data: dict) -> IconSet:
    info = IconSetInfo("t", "T", "MIT", "MIT", "", "", "", "@iconify-json/t", "1.0.0")
    return IconSet({"width": 16, "height": 16, **data}, info)


def test_render_flips_and_rotations_move_the_shape() -> None:
    s = _set(
        {
            "icons": {"left": {"body": LEFT_HALF.format(c="#000")}},
            "aliases": {
                "right": {"parent": "left", "hFlip": True},
                "top": {"parent": "left", "rotate": 1},  # left half turned 90 deg clockwise
                "again-left": {"parent": "right", "hFlip": True},  # flips cancel along the chain
            },
        }
    )

    def mass(name: str) -> tuple[float, float, float, float]:
        a = np.asarray(render_icon(s.resolve(name), SIZE))[..., 3] > 127
        h = SIZE // 2
        return a[:, :h].mean(), a[:, h:].mean(), a[:h].mean(), a[h:].mean()

    left, right, top, bottom = mass("left")
    assert left == pytest.approx(1.0) and right == pytest.approx(0.0)
    left, right, _, _ = mass("right")
    assert left == pytest.approx(0.0) and right == pytest.approx(1.0)
    _, _, top, bottom = mass("top")
    assert top == pytest.approx(1.0) and bottom == pytest.approx(0.0)
    assert s.resolve("again-left") == s.resolve("left")
    assert s.canonical("again-left") == "left"


def test_non_square_icons_are_centred_on_a_square_transparent_canvas() -> None:
    s = _set(
        {"icons": {"wide": {"body": '<rect width="32" height="16" fill="#08f"/>', "width": 32}}}
    )
    a = np.asarray(render_icon(s.resolve("wide"), SIZE))[..., 3]
    assert a.shape == (SIZE, SIZE)
    assert a[: SIZE // 4 - 1].max() == 0 and a[-(SIZE // 4 - 1) :].max() == 0  # padding
    assert a[SIZE // 4 + 1 : 3 * SIZE // 4 - 1].min() == 255  # the band itself


def test_lookup_exact_alias_and_loose() -> None:
    s = _set(
        {
            "icons": {"babychick": {"body": CIRCLE.format(c="#ff0")}},
            "aliases": {"chick": {"parent": "babychick"}},
        }
    )
    assert s.lookup("babychick") == "babychick"
    assert s.lookup("chick") == "chick"
    assert s.lookup("baby-chick") is None
    assert s.lookup("baby-chick", loose=True) == "babychick"
    with pytest.raises(KeyError):
        s.resolve("missing")


# ----------------------------------------------------------------------------------------------
# Captions


@pytest.mark.parametrize(
    ("name", "medium", "caption"),
    [
        ("rocket", "emoji", "a rocket emoji"),
        ("alien", "emoji", "an alien emoji"),
        ("unicorn", "emoji", "a unicorn emoji"),
        ("face-with-tears-of-joy", "emoji", "a face with tears of joy emoji"),
        ("beans", "emoji", "beans emoji"),
        ("bus", "emoji", "a bus emoji"),
        ("flag-chile", "emoji", "a flag of chile emoji"),
        ("flag-for-uganda", "emoji", "a flag of uganda emoji"),
        ("flag-in-hole", "emoji", "a flag in hole emoji"),
        ("magnifying-glass", "icon", "a magnifying glass icon"),
    ],
)
def test_captions_describe_the_thing(name: str, medium: str, caption: str) -> None:
    assert captions.caption_for(name, medium) == caption


def test_name_filters() -> None:
    assert captions.is_skin_tone_variant("waving-hand-medium-dark-skin-tone")
    assert not captions.is_skin_tone_variant("waving-hand")
    assert captions.is_numbered("abstract-001") and captions.is_numbered("nail-2")
    assert not captions.is_numbered("ak47") and not captions.is_numbered("1st-place-medal")


# ----------------------------------------------------------------------------------------------
# Builders


def test_build_emoji_groups_one_subject_across_styles(npm_sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    report = build.build_emoji(
        npm_sources, out, ["alpha", "beta", "gamma"], size=SIZE, min_styles=2
    )
    items = build.finalize(out)
    by_subject: dict[str, dict[str, dict]] = defaultdict(dict)
    for item in items:
        by_subject[item["subject"]][item["style"]] = item
    # rocket: exact in alpha/beta, through an alias in gamma; red-apple: loose in beta, flipped
    # alias in gamma; waving-hand: hidden in gamma; skin tones and single-set names left out.
    assert set(by_subject) == {
        "emoji:rocket",
        "emoji:red-apple",
        "emoji:waving-hand",
        "emoji:flag-chile",
    }
    assert set(by_subject["emoji:rocket"]) == {"alpha", "beta", "gamma"}
    assert set(by_subject["emoji:red-apple"]) == {"alpha", "beta", "gamma"}
    assert set(by_subject["emoji:waving-hand"]) == {"alpha", "beta"}
    assert report.written == len(items) == 11 and not report.skipped

    apple = by_subject["emoji:red-apple"]
    assert apple["beta"]["source_name"] == "redapple"
    assert {a["caption"] for a in apple.values()} == {"a red apple emoji"}
    assert apple["gamma"]["styled_caption"] == "a red apple emoji in the Gamma Set style"
    assert apple["beta"]["category"] == "Food & Drink"  # taken from the set that has one
    assert apple["beta"]["codepoints"] == "1f34e"
    assert apple["beta"]["source"] == "npm:@iconify-json/beta@1.0.0"
    assert apple["beta"]["license"] == "CC-BY-4.0"
    assert apple["beta"]["project_url"] == "https://example.org/beta" and "url" not in apple["beta"]
    # the hFlip alias moved the left-half shape to the right half
    a = _alpha(out / "emoji/gamma/red-apple.png")
    assert a[:, : SIZE // 2].max() == 0 and a[:, SIZE // 2 :].min() == 255
    # currentColor renders (black), background stays transparent
    rocket = np.asarray(Image.open(out / "emoji/gamma/rocket.png"))
    assert rocket.shape == (SIZE, SIZE, 4) and rocket[0, 0, 3] == 0
    assert rocket[SIZE // 2, SIZE // 2].tolist() == [0, 0, 0, 255]
    # the three styles of one subject are different images
    digests = {
        hashlib.sha256((out / i["path"]).read_bytes()).digest()
        for i in by_subject["emoji:rocket"].values()
    }
    assert len(digests) == 3

    for item in items:
        png = out / item["path"]
        assert "." not in png.stem and png.suffix == ".png"
        assert png.with_suffix(".json").is_file()
        assert (item["width"], item["height"]) == Image.open(png).size == (SIZE, SIZE)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert index == items and [i["path"] for i in index] == sorted(i["path"] for i in index)
    license_md = (out / "LICENSE.md").read_text()
    for prefix in ("alpha", "beta", "gamma"):
        assert f"`npm:@iconify-json/{prefix}@1.0.0`" in license_md


def test_emoji_options_sample_and_filter(npm_sources: Path, tmp_path: Path) -> None:
    sets = [build.load_set(npm_sources, p) for p in ("alpha", "beta", "gamma")]
    all_jobs = build.plan_emoji(sets, SIZE, min_styles=3)
    assert sorted({j.meta["name"] for j in all_jobs}) == ["flag-chile", "red-apple", "rocket"]
    no_flags = build.plan_emoji(sets, SIZE, min_styles=3, exclude_categories=["flags"])
    assert sorted({j.meta["name"] for j in no_flags}) == ["red-apple", "rocket"]
    tones = build.plan_emoji(sets, SIZE, min_styles=1, include_skin_tones=True)
    assert "waving-hand-dark-skin-tone" in {j.meta["name"] for j in tones}
    picks = [
        sorted(
            {
                j.meta["name"]
                for j in build.plan_emoji(sets, SIZE, min_styles=3, max_subjects=2, seed=s)
            }
        )
        for s in range(6)
    ]
    assert all(len(p) == 2 for p in picks) and len({tuple(p) for p in picks}) > 1  # seed matters
    assert picks[0] == sorted(
        {j.meta["name"] for j in build.plan_emoji(sets, SIZE, min_styles=3, max_subjects=2, seed=0)}
    )
    with pytest.raises(ValueError, match="only-alpha"):
        build.plan_emoji(sets, SIZE, min_styles=3, subjects=["only-alpha"])


def test_build_is_byte_for_byte_deterministic(npm_sources: Path, tmp_path: Path) -> None:
    digests = []
    for run, workers in ((1, 1), (2, 2)):
        out = tmp_path / f"run{run}"
        # workers=2 renders in a process pool; the bytes must not change
        build.build_emoji(
            npm_sources,
            out,
            ["alpha", "beta", "gamma"],
            size=SIZE,
            min_styles=1,
            include_skin_tones=True,
            workers=workers,
        )
        build.build_icons(npm_sources, out, ["tools"], size=SIZE, workers=workers)
        build.finalize(out)
        digests.append(_tree_digest(out))
    assert digests[0] == digests[1] and len(digests[0]) > 20


def test_build_icons_limits_numbering_and_empty_renders(npm_sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "icons"
    report = build.build_icons(npm_sources, out, ["tools"], size=SIZE, skip_numbered=True)
    names = sorted(p.stem for p in (out / "icons/tools").glob("*.png"))
    assert names == ["hammer", "saw", "wrench"]
    assert report.skipped == Counter(
        {"empty_render": 1}
    )  # "blank" draws nothing: counted, not written
    small = tmp_path / "icons-optimized"
    build.build_icons(
        npm_sources, small, ["tools"], size=SIZE, skip_numbered=True, optimize_png=True
    )
    for name in names:  # the same pixels, whatever the zlib level
        a, b = (Image.open(d / f"icons/tools/{name}.png") for d in (out, small))
        assert np.array_equal(np.asarray(a), np.asarray(b))
    meta = json.loads((out / "icons/tools/saw.json").read_text())
    assert (
        meta["subject"] == "icon:saw"
        and meta["group"] == "icons"
        and meta["caption"] == "a saw icon"
    )
    chosen = build.choose_icons(
        {"a": ["x1", "x2", "x3"], "b": ["y1", "y2"]}, limit=3, per_set_limit=2, seed=1
    )
    assert sum(len(v) for v in chosen.values()) == 3 and len(chosen.get("a", [])) <= 2
    assert chosen == build.choose_icons(
        {"b": ["y2", "y1"], "a": ["x3", "x1", "x2"]}, limit=3, per_set_limit=2, seed=1
    )


def test_all_sets_mode_skips_disallowed_licences(npm_sources: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    report = build.build_icons(npm_sources, out, None, size=SIZE)
    styles = {p.name for p in (out / "icons").iterdir()}
    assert styles == {"alpha", "beta", "gamma", "tools"}
    assert report.skipped["licence_CC-BY-NC-4.0"] == 1
    with pytest.raises(ValueError, match="noncommercial"):
        build.build_icons(npm_sources, out, ["noncommercial"], size=SIZE)
    with pytest.raises(ValueError, match="noncommercial"):
        build.build_emoji(npm_sources, out, ["alpha", "noncommercial"], size=SIZE)


def test_iconify_json_all_sets_layout(tmp_path: Path) -> None:
    """`@iconify/json` keeps every set in one package: json/<prefix>.json with info inside."""
    nm = tmp_path / "npm" / "node_modules" / "@iconify" / "json"
    (nm / "json").mkdir(parents=True)
    (nm / "package.json").write_text(json.dumps({"name": "@iconify/json", "version": "2.0.0"}))
    data = {
        "prefix": "big",
        "info": {
            "name": "Big",
            "license": {"spdx": "MIT", "title": "MIT"},
            "author": {"name": "B"},
        },
        "icons": {"star": {"body": CIRCLE.format(c="#fd0")}},
        "chars": {"2b50": "star"},
        "categories": {"Shapes": ["star"]},
    }
    (nm / "json" / "big.json").write_text(json.dumps(data))
    root = tmp_path / "npm"
    assert sources.available_sets(root) == ["big"]
    s = sources.load_set(root, "big")
    assert s.info.source == "npm:@iconify/json@2.0.0"
    assert s.codepoints("star") == "2b50" and s.category("star") == "Shapes"


def test_missing_sources_name_the_fetch_command(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(sources.SourcesNotFoundError, match="mmdata corpus fetch --sources"):
        sources.load_set(missing, "noto")
    parser = argparse.ArgumentParser()
    corpus_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["corpus", "emoji", "--sources", str(missing), "--out", str(tmp_path / "o")]
    )
    assert args.func(args, []) == 2
    assert "mmdata corpus fetch --sources" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["icons", "--size", "0"],
        ["icons", "--size", "-64"],
        ["emoji", "--size", "0"],
        ["icons", "--workers", "0"],
        ["icons", "--limit", "-1"],
        ["icons", "--per-set-limit", "0"],
        ["emoji", "--max-subjects", "0"],
        ["emoji", "--min-styles", "0"],
        ["photos", "--max-side", "0"],
        ["icons", "--size", "big"],
    ],
)
def test_numeric_options_are_checked_up_front(
    argv: list[str], tmp_path: Path, npm_sources: Path, capsys: pytest.CaptureFixture
) -> None:
    """A size, count or limit below 1 is a usage error naming the option (exit status 2), before
    any source is read or output written."""
    from mmdata.cli import main

    out = tmp_path / "o"
    extra = [] if argv[0] == "photos" else ["--sources", str(npm_sources)]
    with pytest.raises(SystemExit) as e:
        main(["corpus", argv[0], "--out", str(out), *extra, *argv[1:]])
    assert e.value.code == 2
    err = capsys.readouterr().err
    option, value = argv[-2], argv[-1]
    expected = "expected an integer" if value == "big" else f"must be an integer >= 1, got {value}"
    assert f"argument {option}: {expected}" in err, err
    assert not out.exists()


def test_fetch_command_is_pinned_and_needs_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cmd = sources.npm_install_command(Path(".cache/npm"))
    assert cmd[:4] == ["npm", "install", "--prefix", ".cache/npm"] and "--save-exact" in cmd
    specs = [c for c in cmd if c.startswith("@")]
    assert "@iconify-json/noto@1.2.9" in specs and all(
        s.rsplit("@", 1)[1][0].isdigit() for s in specs
    )
    assert not any(s.startswith("@iconify/json@") for s in specs)
    assert "@iconify/json@2.2.535" in sources.npm_install_command(Path("x"), all_sets=True)
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)  # fault: no npm on PATH
    with pytest.raises(RuntimeError, match="npm is not installed"):
        sources.fetch_sources(tmp_path / "npm")


def test_cli_is_registered() -> None:
    from mmdata.cli import SUBCOMMAND_MODULES

    assert "mmdata.corpus.cli" in SUBCOMMAND_MODULES


def test_photos_are_real_downscaled_and_captioned(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    report = build.build_photos(out, max_side=64, names=["chelsea", "hubble_deep_field"])
    assert report.written == 2
    cat = Image.open(out / "photos/skimage/chelsea.png")
    assert max(cat.size) == 64 and cat.mode == "RGB"
    meta = json.loads((out / "photos/skimage/hubble-deep-field.json").read_text())
    assert meta["license"] == "public-domain" and "galaxies" in meta["caption"]
    assert meta["source"].startswith("pypi:scikit-image@")


# ----------------------------------------------------------------------------------------------
# The committed sample corpus

MAX_CORPUS_BYTES = 6_000_000


@pytest.fixture(scope="module")
def sample_items() -> list[dict]:
    return build.read_items(SAMPLE_CORPUS_DIR)


def test_sample_corpus_counts_and_layout(sample_items: list[dict]) -> None:
    recipe = SampleRecipe()
    groups = Counter(i["group"] for i in sample_items)
    assert groups["emoji"] == recipe.emoji_subjects * len(recipe.emoji_sets)
    assert groups["icons"] == recipe.icons_per_set * len(recipe.icon_sets)
    assert 10 <= groups["photos"] <= 20
    assert 300 <= len(sample_items) <= 600
    files = [p for p in SAMPLE_CORPUS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_CORPUS_BYTES
    pngs = sorted(p for p in files if p.suffix == ".png")
    assert len(pngs) == len(sample_items)  # every image has a sidecar (read_items pairs them)
    assert all(p.with_suffix(".json").is_file() and "." not in p.stem for p in pngs)
    extra = {
        p.relative_to(SAMPLE_CORPUS_DIR).as_posix()
        for p in files
        if p.suffix not in (".png", ".json")
    }
    assert extra == {"index.jsonl", "LICENSE.md", "README.md"}
    index = [
        json.loads(line) for line in (SAMPLE_CORPUS_DIR / "index.jsonl").read_text().splitlines()
    ]
    assert index == sample_items


def test_sample_corpus_images_match_their_sidecars(sample_items: list[dict]) -> None:
    for item in sample_items:
        assert item["caption"].strip() and item["subject"] and item["style"] and item["license"]
        with Image.open(SAMPLE_CORPUS_DIR / item["path"]) as im:
            assert im.size == (item["width"], item["height"])
            if item["group"] == "photos":
                assert max(im.size) <= 256
                continue
            assert im.mode == "RGBA" and im.size[0] == im.size[1] <= 128
            alpha = np.asarray(im)[..., 3]
            assert alpha.min() == 0 and alpha.max() == 255, item["path"]  # transparent background


def test_sample_corpus_subjects_span_styles(sample_items: list[dict]) -> None:
    styles: dict[str, set[str]] = defaultdict(set)
    for item in sample_items:
        if item["group"] == "emoji":
            styles[item["subject"]].add(item["style"])
    assert len(styles) == SampleRecipe().emoji_subjects
    assert min(len(s) for s in styles.values()) >= 3
    assert all(s == set(SampleRecipe().emoji_sets) for s in styles.values())
    captions_by_subject: dict[str, set[str]] = defaultdict(set)
    for item in sample_items:
        captions_by_subject[item["subject"]].add(item["caption"])
    assert all(len(c) == 1 for c in captions_by_subject.values())  # style-free captions


def test_sample_corpus_licences_are_attributed(sample_items: list[dict]) -> None:
    license_md = (SAMPLE_CORPUS_DIR / "LICENSE.md").read_text()
    allowed = set(sources.DEFAULT_LICENSES) | {"public-domain"}
    for source in {i["source"] for i in sample_items}:
        assert f"`{source}`" in license_md
    assert {i["license"] for i in sample_items} <= allowed
    for item in sample_items:
        if item["group"] == "photos":
            assert f"`{item['path']}`" in license_md
    assert license_md == build.license_markdown(sample_items)  # not hand-edited: regenerable
    assert REBUILD_COMMAND in (SAMPLE_CORPUS_DIR / "README.md").read_text()


# ----------------------------------------------------------------------------------------------
# CLI usability: bad arguments are one-line errors, nothing is lost silently


def _corpus(argv: list[str]) -> int:
    from mmdata.cli import main

    return main(["corpus", *argv])


def test_a_set_named_twice_counts_once(npm_sources: Path, tmp_path: Path) -> None:
    """`--sets alpha,alpha,beta` wrote nothing: each subject matched one copy of alpha and missed
    min_styles (3 loaded sets)."""
    out = tmp_path / "o"
    args = ["emoji", "--sources", str(npm_sources), "--out", str(out), "--size", "16"]
    assert _corpus([*args, "--sets", "alpha,alpha,beta"]) == 0
    twice = _tree_digest(out)
    build.clear_outputs(out)
    assert _corpus([*args, "--sets", "alpha,beta"]) == 0
    assert twice == _tree_digest(out) and len(twice) > 2
    report = build.build_emoji(npm_sources, tmp_path / "api", ["alpha", "alpha", "beta"], size=16)
    assert report.written == len([p for p in twice if p.endswith(".png")])


@pytest.mark.parametrize(
    "sets, message",
    [
        (",", "expected a comma list of icon set names"),
        ("alpha,../x", "not an icon set name: '../x'"),
    ],
)
def test_bad_sets_are_usage_errors(
    sets: str, message: str, npm_sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for what in ("emoji", "icons"):
        with pytest.raises(SystemExit) as e:
            _corpus([what, "--sources", str(npm_sources), "--out", str(tmp_path), "--sets", sets])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_min_styles_above_the_number_of_sets_is_refused(
    npm_sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An explicit --min-styles 5 with two sets was lowered to 2 without a word."""
    out = tmp_path / "o"
    argv = ["emoji", "--sources", str(npm_sources), "--out", str(out), "--sets", "alpha,beta"]
    assert _corpus([*argv, "--min-styles", "5"]) == 2
    assert "--min-styles 5 is more than the 2 set(s)" in capsys.readouterr().err
    assert not out.exists()
    assert _corpus([*argv, "--size", "16"]) == 0  # the default (3) is lowered to the two sets
    assert {p.parent.name for p in out.glob("emoji/*/*.png")} == {"alpha", "beta"}


def test_a_build_that_writes_nothing_says_so(
    npm_sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Nothing to write ended in "error: [Errno 2] No such file or directory: '.../index.jsonl'"."""
    out = tmp_path / "o"
    argv = ["emoji", "--sources", str(npm_sources), "--out", str(out), "--size", "16"]
    assert _corpus([*argv, "--sets", "tools,beta,gamma"]) == 1
    err = capsys.readouterr().err
    assert "nothing written" in err and "no emoji subject is in 3 of the sets" in err
    assert "Errno" not in err


@pytest.mark.parametrize("what", ["emoji", "icons", "photos", "sample"])
def test_out_that_is_a_file_is_a_one_line_error(
    what: str, npm_sources: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`--out` naming a file (or a path under one) was a NotADirectoryError traceback."""
    f = tmp_path / "file.txt"
    f.write_text("x")
    extra = [] if what == "photos" else ["--sources", str(npm_sources)]
    for out in (f, f / "sub"):
        assert _corpus([what, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{f} is not a folder" in err and "Traceback" not in err
    assert f.read_text() == "x"


def test_finalize_reads_only_the_builders_folders(npm_sources: Path, tmp_path: Path) -> None:
    """A sidecar of something else two levels down (no `source`) broke LICENSE.md with a KeyError."""
    out = tmp_path / "o"
    build.build_icons(npm_sources, out, ["tools"], size=16)
    other = out / "notes" / "misc"
    other.mkdir(parents=True)
    (other / "x.json").write_text('{"caption": "mine"}')
    Image.new("RGB", (4, 4)).save(other / "x.png")
    items = build.finalize(out)
    assert items and all(i["path"].startswith("icons/") for i in items)


def test_fetch_failure_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """npm that cannot reach its registry raised CalledProcessError (a traceback)."""
    import os
    import shutil
    import subprocess

    if shutil.which("npm") is None:
        pytest.skip("npm is not installed here")
    env = {
        "npm_config_registry": "http://127.0.0.1:9/",  # nothing listens: refused at once
        "npm_config_fetch_retries": "0",
        "npm_config_cache": str(tmp_path / "cache"),
        "npm_config_logs_dir": str(tmp_path / "logs"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = _corpus(["fetch", "--sources", str(tmp_path / "npm")])
    except subprocess.CalledProcessError as e:  # the bug
        pytest.fail(f"traceback: {e}")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert code == 1
    assert "npm install failed (exit status" in capsys.readouterr().err
