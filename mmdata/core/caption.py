"""Caption cleaning.

The rule (also in README, "Captions"):
1. A missing caption is rejected (`caption_missing`).
2. Bytes must be valid UTF-8 (a leading BOM is dropped); otherwise `caption_not_utf8`. We do not guess
   other encodings: a wrong guess silently corrupts text, a reject is visible.
3. HTML entities are unescaped (`&amp;` -> `&`), Unicode is NFC-normalised, control and format characters are
   removed, and every run of whitespace becomes one space; leading/trailing space is stripped.
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
    text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch)[0] != "C"
    )
    text = _WS.sub(" ", text).strip()
    if not text:
        return Reason("caption_empty", "caption is empty after cleaning")
    if len(text) > max_chars:
        return Reason("caption_too_long", f"{len(text)} characters > {max_chars}")
    if _FILENAME.match(text):
        return Reason("caption_filename", f"caption is a file name: {text[:80]!r}")
    return text
