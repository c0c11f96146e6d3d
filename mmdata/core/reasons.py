"""A rejection reason: what a pure per-record function returns instead of a result."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    """Why a record was refused.

    Attributes:
        reason: short snake_case code, stable across releases (counted in the manifest).
        detail: human-readable specifics (sizes, thresholds, exception text).
    """

    reason: str
    detail: str = ""
