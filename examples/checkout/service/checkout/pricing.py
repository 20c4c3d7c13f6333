"""Cart pricing: product prices and discount codes."""

from __future__ import annotations

from typing import Any

from checkout.db import Database


class CheckoutError(ValueError):
    """A client mistake (unknown product or code): answered with 400."""


def price(db: Database, sku: str) -> int:
    rows = db.execute("SELECT price_cents FROM products WHERE sku = ?", (sku,))
    if not rows:
        raise CheckoutError(f"unknown product {sku!r}")
    return int(rows[0][0])


def discount_for(db: Database, code: str) -> dict[str, Any]:
    rows = db.execute("SELECT code, percent FROM discounts WHERE code = ?", (code,))
    if not rows:
        raise CheckoutError(f"unknown discount code {code!r}")
    return {"code": rows[0][0], "percent": rows[0][1]}


def cart_total(db: Database, items: list[tuple[str, int]], code: str | None = None) -> int:
    """Total in cents after the discount code, never below zero."""
    subtotal = sum(price(db, sku) * qty for sku, qty in items)
    if code:
        d = discount_for(db, code)
        subtotal -= subtotal * (d["percent"] or 0) // 100
    return max(subtotal, 0)
