"""Caption cleaning.

The rule (also in README, "Captions"):
1. A missing caption is rejected (`caption_missing`).
2. Bytes must be valid UTF-8 (a leading BOM is dropped); otherwise `caption_not_utf8`. We do not guess
   other encodings: a wrong guess silently corrupts text, a reject is visible.
3. HTML character references are unescaped (`&amp;` -> `&`, `&#233;` -> `é`), up to three times so
   double-escaped scraped text (`&amp;amp;`) comes out clean; only complete references are read: a named
   one needs its `;` (HTML would also read `&copy` in `ad&copyright`, which is text). Unicode is
   NFC-normalised; control characters, surrogates, private-use characters, noncharacters and format
   characters are removed, except the joiners that are part of the text (ZWJ in emoji sequences
   such as woman + ZWJ + laptop, ZWNJ in Persian and Indic words, the tag characters of subdivision
   flags). Characters this Python's Unicode database does not know yet (emoji newer than it) are
   kept, so the result does not depend on the worker's Python version. Every run of whitespace becomes one space; leading/trailing
   space and joiners are stripped.
4. What is left must be non-empty (`caption_empty`), at most `max_chars` characters (`caption_too_long`;
   absurdly long text is usually scraped page text, not a caption) and not a bare file name such as
   `IMG_1234.jpg` (`caption_filename`).
"""

from __future__ import annotations

import html
import re
import unicodedata

from mmdata.core.reasons import Reason

_WS = re.compile(r"\s+")
# Complete character references only: named ones need their ";", numeric ones may omit it (as in HTML).
_CHAR_REF = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31};|#[0-9]{1,7};?|#[xX][0-9A-Fa-f]{1,6};?)")
MAX_UNESCAPE_ROUNDS = 3
_ZWNJ, _ZWJ = "\u200c", "\u200d"
_TAGS = range(0xE0020, 0xE0080)  # emoji tag sequences (subdivision flags)
_EDGE = " " + _ZWNJ + _ZWJ + "".join(map(chr, _TAGS))
# A joiner next to a space joins nothing.
_LOOSE_JOINERS = re.compile(r"(?<= )[\u200c\u200d]+|[\u200c\u200d]+(?= )")


def _unescape(text: str) -> str:
    for _ in range(MAX_UNESCAPE_ROUNDS):
        new = _CHAR_REF.sub(lambda m: html.unescape(m.group(0)), text)
        if new == text:
            break
        text = new
    return text


def _is_noncharacter(cp: int) -> bool:
    return 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE


def _keep(ch: str) -> bool:
    """Whether a non-space character stays in the caption."""
    cat = unicodedata.category(ch)
    if cat == "Cf":
        return ch in (_ZWNJ, _ZWJ) or ord(ch) in _TAGS
    if cat == "Cn":  # unassigned in this Python's Unicode version: may be a newer emoji
        return not _is_noncharacter(ord(ch))
    return cat[0] != "C"  # Cc control, Cs surrogate, Co private use


_FILENAME = re.compile(r"^[\w\-. ]+\.(jpe?g|png|webp|gif|bmp|tiff?)$", re.IGNORECASE)


def clean_caption(raw: bytes | str | None, max_chars: int = 1000) -> str | Reason:
    """Clean a caption, or say why it cannot be used.

    Args:
        raw: caption as found (bytes from a file, str from a manifest, or None).
        max_chars: longest caption accepted after cleaning.

    Returns:
        The cleaned caption, or a Reason.
    """
    if raw is None:
        return Reason("caption_missing", "no caption found for this image")
    if isinstance(raw, bytes | bytearray):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            return Reason("caption_not_utf8", f"invalid UTF-8 at byte {e.start}")
    else:
        text = str(raw)
    text = text.removeprefix("\ufeff")
    text = _unescape(text)
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or _keep(ch))
    text = _WS.sub(" ", _LOOSE_JOINERS.sub("", _WS.sub(" ", text))).strip(_EDGE)
    if not text:
        return Reason("caption_empty", "caption is empty after cleaning")
    if len(text) > max_chars:
        return Reason("caption_too_long", f"{len(text)} characters > {max_chars}")
    if _FILENAME.match(text):
        return Reason("caption_filename", f"caption is a file name: {text[:80]!r}")
    return text
