"""Where corpus sources come from: pinned npm packages in a local folder, and how to fetch them.

Nothing here touches the network except :func:`fetch_sources`, which runs ``npm install`` and is
only called by the explicit ``mmdata corpus fetch`` command. Builders read a ``--sources`` folder
(an npm prefix such as ``.cache/npm``) laid out by npm:

- ``<sources>/node_modules/@iconify-json/<prefix>/{icons,info,chars,metadata,package}.json``
  (one package per icon set), and/or
- ``<sources>/node_modules/@iconify/json/json/<prefix>.json`` (all ~240 sets in one package,
  each file carrying ``info``, ``chars`` and ``categories`` itself).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mmdata.corpus.iconify import IconSet, IconSetInfo

log = logging.getLogger(__name__)

DEFAULT_SOURCES_DIR = Path(".cache/npm")
FETCH_HINT = "mmdata corpus fetch --sources {sources}"  # also `make corpus-sources`

# Pinned single-set packages: the emoji styles and the named-item icon sets the builders default to.
# Licences are read from each set's info.json at build time; listed here for the reader.
EMOJI_PACKAGES: dict[str, str] = {
    "noto": "1.2.9",  # Apache-2.0, Google
    "twemoji": "1.2.5",  # CC-BY-4.0, Twitter
    "fluent-emoji": "1.2.7",  # MIT, Microsoft (3D-like colour)
    "fluent-emoji-flat": "1.2.6",  # MIT, Microsoft
    "fluent-emoji-high-contrast": "1.2.6",  # MIT, Microsoft (monochrome)
    "openmoji": "1.2.29",  # CC-BY-SA-4.0, OpenMoji
    "emojione": "1.2.3",  # CC-BY-4.0, Emoji One
    "noto-v1": "1.2.5",  # Apache-2.0, Google (older design)
    "emojione-v1": "1.2.3",  # CC-BY-SA-4.0, Emoji One (older design)
    "emojione-monotone": "1.2.1",  # CC-BY-4.0, Emoji One (monochrome)
    "fxemoji": "1.2.2",  # Apache-2.0, Mozilla
    "streamline-emojis": "1.2.4",  # CC-BY-4.0, Streamline
}
ICON_PACKAGES: dict[str, str] = {
    "flat-color-icons": "1.2.3",  # MIT, Icons8
    "game-icons": "1.2.4",  # CC-BY-3.0, GameIcons
    "icon-park": "1.2.4",  # Apache-2.0, ByteDance
    "streamline-kameleon-color": "1.2.2",  # CC-BY-4.0, Streamline
}
# Every set in one package (~390k icons, ~465 MB unpacked): only fetched with `--all-sets`.
ALL_SETS_PACKAGE = ("@iconify/json", "2.2.535")

# Default licence allow-list: permissive and share-alike licences that allow commercial use.
# Non-commercial (CC-BY-NC*), no-derivatives and GPL sets are left out unless asked for.
DEFAULT_LICENSES: tuple[str, ...] = (
    "MIT",
    "Apache-2.0",
    "ISC",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "CC0-1.0",
    "Unlicense",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "OFL-1.1",
    "MPL-2.0",
)


class SourcesNotFoundError(FileNotFoundError):
    """The npm sources folder, or a set inside it, is missing; the message says how to fetch it."""


def pinned_packages(all_sets: bool = False) -> list[str]:
    """``name@version`` of every package ``mmdata corpus fetch`` installs."""
    specs = [
        f"@iconify-json/{p}@{v}" for p, v in sorted({**EMOJI_PACKAGES, **ICON_PACKAGES}.items())
    ]
    if all_sets:
        specs.append(f"{ALL_SETS_PACKAGE[0]}@{ALL_SETS_PACKAGE[1]}")
    return specs


def npm_install_command(sources: Path, all_sets: bool = False) -> list[str]:
    """The exact ``npm install`` argv that fills ``sources`` (an npm prefix folder)."""
    return [
        "npm",
        "install",
        "--prefix",
        str(sources),
        "--save-exact",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        *pinned_packages(all_sets),
    ]


def fetch_sources(sources: Path, all_sets: bool = False) -> None:
    """Install the pinned npm packages into ``sources`` (network: the npm registry only)."""
    if shutil.which("npm") is None:
        raise RuntimeError(
            "npm is not installed; install Node.js (with npm) to fetch corpus sources"
        )
    sources.mkdir(parents=True, exist_ok=True)
    cmd = npm_install_command(sources, all_sets)
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def _node_modules(sources: Path) -> Path:
    if (sources / "node_modules").is_dir():
        return sources / "node_modules"
    if (sources / "@iconify-json").is_dir() or (sources / "@iconify").is_dir():
        return sources  # the caller pointed at node_modules itself
    raise SourcesNotFoundError(
        f"no npm sources under {sources} (expected {sources}/node_modules/@iconify-json/...). "
        f"Fetch them once with: {FETCH_HINT.format(sources=sources)}"
    )


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def available_sets(sources: Path) -> list[str]:
    """Sorted prefixes of every icon set found under ``sources`` (either layout)."""
    nm = _node_modules(sources)
    found: set[str] = set()
    single = nm / "@iconify-json"
    if single.is_dir():
        found.update(p.name for p in single.iterdir() if (p / "icons.json").is_file())
    full = nm / "@iconify" / "json" / "json"
    if full.is_dir():
        found.update(p.stem for p in full.glob("*.json"))
    return sorted(found)


def _info_from(prefix: str, info: dict[str, Any], package: str, version: str) -> IconSetInfo:
    lic = info.get("license") or {}
    author = info.get("author") or {}
    return IconSetInfo(
        prefix=prefix,
        name=str(info.get("name") or prefix),
        license_spdx=str(lic.get("spdx") or ""),
        license_title=str(lic.get("title") or ""),
        license_url=str(lic.get("url") or ""),
        author=str(author.get("name") or ""),
        author_url=str(author.get("url") or ""),
        package=package,
        version=version,
    )


def load_set(sources: Path, prefix: str) -> IconSet:
    """Load one icon set; a single-set package wins over the all-sets package.

    Raises:
        SourcesNotFoundError: the sources folder or this set is missing.
    """
    nm = _node_modules(sources)
    single = nm / "@iconify-json" / prefix
    if (single / "icons.json").is_file():
        pkg = _read_json(single / "package.json")
        info = _read_json(single / "info.json")
        chars = _read_json(single / "chars.json") if (single / "chars.json").is_file() else {}
        meta = _read_json(single / "metadata.json") if (single / "metadata.json").is_file() else {}
        return IconSet(
            _read_json(single / "icons.json"),
            _info_from(prefix, info, pkg["name"], pkg["version"]),
            chars=chars,
            categories=meta.get("categories") or {},
        )
    full_file = nm / "@iconify" / "json" / "json" / f"{prefix}.json"
    if full_file.is_file():
        pkg = _read_json(nm / "@iconify" / "json" / "package.json")
        data = _read_json(full_file)
        return IconSet(
            data,
            _info_from(prefix, data.get("info") or {}, pkg["name"], pkg["version"]),
            chars=data.get("chars") or {},
            categories=data.get("categories") or {},
        )
    raise SourcesNotFoundError(
        f"icon set {prefix!r} not found under {nm} (neither @iconify-json/{prefix} nor "
        f"@iconify/json). Fetch the pinned sets with: {FETCH_HINT.format(sources=sources)}"
        + (" --all-sets" if prefix not in EMOJI_PACKAGES and prefix not in ICON_PACKAGES else "")
    )
