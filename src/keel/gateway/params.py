"""Bounded query parameters: every number a client can send has a range, every enum a set.

Out-of-range, non-numeric, non-ASCII ("²") or unknown values are a 400 that names the
parameter and the accepted values, never a 500 from a database overflow or a silently
ignored filter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from keel.errors import InvalidRequest

MAX_HOURS = 24 * 366 * 10  # ten years of history is more than any filter needs
MAX_PAGE = 1_000_000


def int_param(q: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    s = raw.strip()
    if not (s.isascii() and s.lstrip("-").isdigit()) or len(s) > 20:
        raise InvalidRequest(f"query parameter '{name}' must be an integer from {lo} to {hi}, "
                             f"got {raw[:40]!r}", param=name)
    v = int(s)
    if not lo <= v <= hi:
        raise InvalidRequest(f"query parameter '{name}' must be from {lo} to {hi}, got {v}",
                             param=name)
    return v


def float_param(q: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    try:
        if not raw.isascii():
            raise ValueError(raw)
        v = float(raw)
    except ValueError:
        raise InvalidRequest(f"query parameter '{name}' must be a number from {lo:g} to "
                             f"{hi:g}, got {raw[:40]!r}", param=name) from None
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InvalidRequest(f"query parameter '{name}' must be from {lo:g} to {hi:g}, "
                             f"got {raw[:40]}", param=name)
    return v


def choice_param(q: Mapping[str, str], name: str, choices: Iterable[str]) -> str | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return None
    allowed = tuple(choices)
    if raw not in allowed:
        raise InvalidRequest(f"query parameter '{name}' must be one of {', '.join(allowed)}, "
                             f"got {raw[:40]!r}", param=name)
    return raw
