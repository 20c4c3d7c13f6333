"""Money is integer micro-USD everywhere in keel's books: ``$0.02`` is ``20_000``."""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
# Bounds that keep every sum in the books far inside a signed 64-bit integer (9.2e18): one
# amount is at most $1 billion, one account balance at most $100 billion either way.
MAX_AMOUNT_MICROS = 10**15
MAX_BALANCE_MICROS = 10**17
# a typed amount: ASCII digits with an optional sign and point; Decimal() alone would also
# take "1e2", "Infinity", "1_000" and non-ASCII digits ("٣")
_PLAIN = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def usd_to_micros(value: Decimal | str | int | float) -> int:
    """Exact conversion; a fraction of a micro-dollar is an error, never silently rounded,
    and so is an amount over $1 billion (``MAX_AMOUNT_MICROS``) or one that is not finite.
    A string must be a plain decimal (``2``, ``2.00``, ``$2.00``): no exponent, no digit
    separators, ASCII digits only."""
    if isinstance(value, str):
        text = value.strip().removeprefix("$")
        if not _PLAIN.fullmatch(text):
            raise ValueError(f"{value!r} is not an amount of USD: write a plain decimal "
                             "(ASCII digits with an optional point, e.g. 2.00; no exponent, "
                             "'+' or digit separators)")
    try:
        d = Decimal(str(value).strip().removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount of USD (e.g. 2.00)") from None
    if not d.is_finite() or abs(d) * MICROS_PER_USD > MAX_AMOUNT_MICROS:
        raise ValueError(f"{value!r} is not an amount keel's ledger accepts: at most "
                         f"{fmt_usd(MAX_AMOUNT_MICROS)} per amount")
    micros = d * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{value!r} has more precision than a micro-dollar (6 decimals)")
    return int(micros)


def atomic_to_micros(amount: int, decimals: int) -> int:
    """Token units of a USD stablecoin with ``decimals`` to micro-USD, rounded up (a price
    is never under-counted against a budget)."""
    if decimals == 6:
        return amount
    scaled = Decimal(amount) * MICROS_PER_USD / (Decimal(10) ** decimals)
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def fmt_usd(micros: int) -> str:
    """``$2.00`` for whole cents, ``$0.000125`` otherwise; always exact."""
    sign = "-" if micros < 0 else ""
    d = Decimal(abs(micros)) / MICROS_PER_USD
    text = f"{d:.2f}" if abs(micros) % 10_000 == 0 else f"{d.normalize():f}"
    return f"{sign}${text}"
