"""Money is integer micro-USD everywhere in keel's books: ``$0.02`` is ``20_000``."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


def usd_to_micros(value: Decimal | str | int | float) -> int:
    """Exact conversion; a fraction of a micro-dollar is an error, never silently rounded."""
    try:
        d = Decimal(str(value).strip().removeprefix("$"))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount of USD (e.g. 2.00)") from None
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
