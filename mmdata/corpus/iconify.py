"""Reading Iconify JSON icon sets and turning one icon into a standalone SVG document.

Iconify JSON (https://iconify.design/docs/types/iconify-json.html) stores a set as
``{"prefix", "icons": {name: {"body", "width"?, "height"?, "left"?, "top"?, "rotate"?, "hFlip"?,
"vFlip"?, "hidden"?}}, "aliases": {name: {"parent", ...overrides}}, "width"?, "height"?, ...}``.
``body`` is the inner markup of an ``<svg>`` whose viewBox is ``left top width height`` (default
``0 0 16 16``). Aliases point at a parent icon and may add flips/rotations.

Pure functions only: no file access here (see ``sources.py`` for finding sets on disk).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

DEFAULT_SIZE = 16  # Iconify's default width/height when a set gives none
MAX_ALIAS_DEPTH = 16  # aliases may chain; a longer chain is a broken set


@dataclasses.dataclass(frozen=True)
class IconSetInfo:
    """Where a set came from and under which terms (the set's ``info`` block plus the package)."""

    prefix: str
    name: str
    license_spdx: str
    license_title: str
    license_url: str
    author: str
    author_url: str
    package: str  # npm package the set was read from, e.g. "@iconify-json/noto"
    version: str  # that package's version

    @property
    def source(self) -> str:
        """Provenance string stored in each sidecar, e.g. ``npm:@iconify-json/noto@1.2.9``."""
        return f"npm:{self.package}@{self.version}"


@dataclasses.dataclass(frozen=True)
class IconData:
    """One resolved icon: SVG body plus its box and transformations."""

    body: str
    left: float = 0.0
    top: float = 0.0
    width: float = DEFAULT_SIZE
    height: float = DEFAULT_SIZE
    rotate: int = 0  # quarter turns clockwise
    h_flip: bool = False
    v_flip: bool = False


class IconSet:
    """An Iconify icon set held in memory.

    Args:
        data: the parsed Iconify JSON (``icons.json`` of an ``@iconify-json/<set>`` package, or one
            ``json/<set>.json`` file of ``@iconify/json``).
        info: licence and provenance.
        chars: optional ``{codepoints_hex: name}`` (``chars.json``), e.g. ``{"1f680": "rocket"}``.
        categories: optional ``{category: [names]}`` (``metadata.json`` / ``categories``).
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        info: IconSetInfo,
        chars: Mapping[str, str] | None = None,
        categories: Mapping[str, list[str]] | None = None,
    ) -> None:
        if "icons" not in data:
            raise ValueError(f"icon set {info.prefix!r}: not Iconify JSON (no 'icons')")
        self.info = info
        self._icons: dict[str, dict[str, Any]] = dict(data["icons"])
        self._aliases: dict[str, dict[str, Any]] = dict(data.get("aliases") or {})
        self._defaults = {
            "left": data.get("left", 0),
            "top": data.get("top", 0),
            "width": data.get("width", DEFAULT_SIZE),
            "height": data.get("height", DEFAULT_SIZE),
        }
        self._codepoints: dict[str, str] = {}
        for cps, name in sorted((chars or {}).items()):
            self._codepoints.setdefault(name, cps)
        self._category: dict[str, str] = {}
        for category in sorted(categories or {}):
            for name in categories[category]:
                self._category.setdefault(name, category)
        # Loose index for sets whose names drop the hyphens ("babychick" for "baby-chick").
        self._loose: dict[str, str] = {}
        for name in sorted(self._icons):
            self._loose.setdefault(_loose_key(name), name)

    @property
    def prefix(self) -> str:
        return self.info.prefix

    def icon_names(self, include_hidden: bool = False) -> list[str]:
        """Sorted names of the set's own icons (aliases excluded: they repeat an icon)."""
        return sorted(n for n, v in self._icons.items() if include_hidden or not v.get("hidden"))

    def __contains__(self, name: str) -> bool:
        return name in self._icons or name in self._aliases

    def lookup(self, name: str, loose: bool = False) -> str | None:
        """The name under which ``name`` exists in this set (itself or an alias), or None.

        With ``loose``, also match ignoring hyphens (some sets write "babychick").
        """
        if name in self._icons or name in self._aliases:
            return name
        if loose:
            return self._loose.get(_loose_key(name))
        return None

    def canonical(self, name: str) -> str:
        """The icon an alias finally points at (the name itself for an icon)."""
        seen = 0
        while name in self._aliases:
            name = self._aliases[name]["parent"]
            seen += 1
            if seen > MAX_ALIAS_DEPTH:
                raise ValueError(f"{self.prefix}: alias chain too long at {name!r}")
        if name not in self._icons:
            raise KeyError(f"{self.prefix}: no icon {name!r}")
        return name

    def is_hidden(self, name: str) -> bool:
        """Hidden icons are kept by Iconify for old names only; builders skip them."""
        return bool(self._icons[self.canonical(name)].get("hidden", False))

    def codepoints(self, name: str) -> str | None:
        """Unicode code points (hex, dash-separated) of an emoji icon, where the set has them."""
        return self._codepoints.get(name) or self._codepoints.get(self.canonical(name))

    def category(self, name: str) -> str | None:
        return self._category.get(name) or self._category.get(self.canonical(name))

    def resolve(self, name: str) -> IconData:
        """The full icon data for an icon or alias name, with alias transformations merged."""
        chain: list[dict[str, Any]] = []
        current = name
        while current in self._aliases:
            alias = self._aliases[current]
            chain.append(alias)
            current = alias["parent"]
            if len(chain) > MAX_ALIAS_DEPTH:
                raise ValueError(f"{self.prefix}: alias chain too long at {name!r}")
        if current not in self._icons:
            raise KeyError(f"{self.prefix}: no icon {name!r}")
        props: dict[str, Any] = {**self._defaults, **self._icons[current]}
        rotate = int(props.get("rotate", 0))
        h_flip = bool(props.get("hFlip", False))
        v_flip = bool(props.get("vFlip", False))
        # Aliases nearest the icon apply first; box fields are overridden, transforms add up.
        for alias in reversed(chain):
            for key in ("left", "top", "width", "height"):
                if key in alias:
                    props[key] = alias[key]
            rotate += int(alias.get("rotate", 0))
            h_flip ^= bool(alias.get("hFlip", False))
            v_flip ^= bool(alias.get("vFlip", False))
        return IconData(
            body=props["body"],
            left=float(props["left"]),
            top=float(props["top"]),
            width=float(props["width"]),
            height=float(props["height"]),
            rotate=rotate % 4,
            h_flip=h_flip,
            v_flip=v_flip,
        )


def _loose_key(name: str) -> str:
    return name.replace("-", "").replace("_", "")


def _num(x: float) -> str:
    return f"{x:g}"


def icon_to_svg(icon: IconData, width: int, height: int, color: str = "#000000") -> str:
    """A standalone SVG document drawing ``icon`` into a ``width`` x ``height`` pixel canvas.

    Follows Iconify's own ``iconToSVG``: flips are applied before the rotation; a quarter-turn
    swaps the box. ``color`` is what ``currentColor`` (monochrome sets) resolves to.
    """
    left, top, box_w, box_h = icon.left, icon.top, icon.width, icon.height
    transforms: list[str] = []
    rotation = icon.rotate
    if icon.h_flip:
        if icon.v_flip:
            rotation += 2
        else:
            transforms.append(f"translate({_num(box_w + left)} {_num(-top)})")
            transforms.append("scale(-1 1)")
            left = top = 0.0
    elif icon.v_flip:
        transforms.append(f"translate({_num(-left)} {_num(box_h + top)})")
        transforms.append("scale(1 -1)")
        left = top = 0.0
    rotation %= 4
    if rotation == 1:
        c = box_h / 2 + top
        transforms.insert(0, f"rotate(90 {_num(c)} {_num(c)})")
    elif rotation == 2:
        transforms.insert(0, f"rotate(180 {_num(box_w / 2 + left)} {_num(box_h / 2 + top)})")
    elif rotation == 3:
        c = box_w / 2 + left
        transforms.insert(0, f"rotate(-90 {_num(c)} {_num(c)})")
    if rotation % 2 == 1:
        left, top = top, left
        box_w, box_h = box_h, box_w
    body = icon.body
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'width="{width}" height="{height}" '
        f'viewBox="{_num(left)} {_num(top)} {_num(box_w)} {_num(box_h)}" '
        f'preserveAspectRatio="xMidYMid meet" color="{color}">{body}</svg>'
    )
