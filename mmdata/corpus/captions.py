"""Captions for rendered emoji and icons, made from their names.

Choice: the ``caption`` describes the *thing* and its medium, never the artistic style
("a rocket emoji", "a magnifying glass icon"), so every style of one subject shares one caption and
style-conditioned tasks can take the style from another image. The style goes into metadata
(``style``, ``style_name``) and into a separate ``styled_caption``
("a rocket emoji in the Noto Emoji style") for tasks that want it in words.
"""

from __future__ import annotations

import re

SKIN_TONE_RE = re.compile(r"-(light|medium-light|medium|medium-dark|dark)-skin-tone(s)?\b")
_NUMBERED_RE = re.compile(r"(^|-)\d+($|-)")
# Words that start with a vowel letter but a consonant sound, and the reverse.
_A_EXCEPTIONS = ("uni", "use", "usb", "euro", "one", "ufo", "ukulele", "utensil", "urn")
_AN_EXCEPTIONS = ("hour", "honest", "honey", "x-ray", "xray")
# Final words that end in "s" but are singular.
_SINGULAR_S = ("bus", "glass", "dress", "cactus", "octopus", "compass", "chess", "grass", "lotus")


def phrase_from_name(name: str) -> str:
    """``"face-with-tears-of-joy"`` -> ``"face with tears of joy"``."""
    words = [w for w in re.split(r"[-_\s]+", name.strip()) if w]
    return " ".join(words)


def is_skin_tone_variant(name: str) -> bool:
    """True for names like ``waving-hand-medium-skin-tone`` (variants of one subject)."""
    return SKIN_TONE_RE.search(name) is not None


def is_numbered(name: str) -> bool:
    """True for names with a bare number token (``abstract-001``, ``baby-2``): usually variants."""
    return _NUMBERED_RE.search(name) is not None


def _looks_plural(phrase: str) -> bool:
    last = phrase.split(" ")[-1]
    if last in _SINGULAR_S or last.endswith(("ss", "us", "is")):
        return False
    return last.endswith("s") and len(last) > 3


def with_article(phrase: str) -> str:
    """Prefix "a"/"an" (none for plurals and numbers): ``"alien"`` -> ``"an alien"``."""
    if not phrase or phrase[0].isdigit() or _looks_plural(phrase):
        return phrase
    low = phrase.lower()
    if low.startswith(_AN_EXCEPTIONS):
        return f"an {phrase}"
    if low.startswith(_A_EXCEPTIONS):
        return f"a {phrase}"
    return f"{'an' if low[0] in 'aeiou' else 'a'} {phrase}"


def subject_phrase(name: str) -> str:
    """The words for a subject name; flags read "flag of <country>"."""
    phrase = phrase_from_name(name)
    for prefix in ("flag for ", "flag of ", "flag "):
        if phrase.startswith(prefix) and not phrase.startswith("flag in "):
            return "flag of " + phrase[len(prefix) :]
    return phrase


def caption_for(name: str, medium: str) -> str:
    """``caption_for("rocket", "emoji")`` -> ``"a rocket emoji"``."""
    return f"{with_article(subject_phrase(name))} {medium}"


def styled_caption_for(name: str, medium: str, style_name: str) -> str:
    """``"a rocket emoji in the Noto Emoji style"``."""
    return f"{caption_for(name, medium)} in the {style_name} style"
