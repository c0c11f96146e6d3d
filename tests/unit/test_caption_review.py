"""Caption cleaning keeps the meaning of the text (mmdata/core/caption.py)."""

from __future__ import annotations

import pytest

from mmdata.core.caption import clean_caption
from mmdata.core.reasons import Reason


@pytest.mark.parametrize(
    "raw, expected",
    [
        # Named references need their ";": HTML's legacy `&copy`/`&not`/`&reg` without one are text.
        ("ad&copyright &copy; 2020", "ad&copyright \u00a9 2020"),
        ("black&notebook on a desk", "black&notebook on a desk"),
        ("data&regression chart", "data&regression chart"),
        ("30&degrees of tilt", "30&degrees of tilt"),
        ("caf&eacute; sign", "caf\u00e9 sign"),
        ("&#39;quoted&#39 text", "'quoted' text"),
        ("R&amp;D lab &#x1F680;", "R&D lab \U0001f680"),
        # Scraped alt text is often escaped twice.
        ("Tom &amp;amp; Jerry", "Tom & Jerry"),
        ("Tom &amp;amp;amp; Jerry", "Tom & Jerry"),
        ("AT&T and Q&A", "AT&T and Q&A"),
    ],
)
def test_html_references(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        # ZWJ emoji sequence: without the joiner "woman technologist" reads "woman, laptop".
        ("\U0001f469\u200d\U0001f4bb coding", "\U0001f469\u200d\U0001f4bb coding"),
        # ZWNJ is part of Persian spelling ("I want").
        (
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
        ),
        # Subdivision flag (Scotland): black flag + tag characters; without them a plain black flag.
        (
            "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f flag",
            "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f flag",
        ),
        # Unassigned in Python 3.11's Unicode 14 (moose, Unicode 15): kept, so every Python agrees.
        ("a moose \U0001face", "a moose \U0001face"),
        # Other format characters, controls, private use, noncharacters still go.
        ("zero\u200bwidth \u202eoverride\u202c soft\u00adhyphen", "zerowidth override softhyphen"),
        ("a\x00b\ue000c\ufdd0d\uffff", "abcd"),
        # A joiner at the ends or next to a space joins nothing.
        ("\u200dhi\u200c", "hi"),
        ("a \u200d b\u200c c", "a b c"),
    ],
)
def test_joiners_and_format_characters(raw: str, expected: str) -> None:
    assert clean_caption(raw) == expected


@pytest.mark.parametrize("raw", ["\u200d\u200c", " \U000e0067 ", "\u200b"])
def test_only_invisible_characters_is_empty(raw: str) -> None:
    out = clean_caption(raw)
    assert isinstance(out, Reason) and out.reason == "caption_empty"
