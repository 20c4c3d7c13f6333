"""The payment call. A live key would charge a card; anything else is a test charge."""

from __future__ import annotations

import os


def charge(total_cents: int) -> str:
    key = os.environ.get("CHECKOUT_PAYMENT_KEY", "")
    if not key:
        raise RuntimeError("CHECKOUT_PAYMENT_KEY is not set")
    return "live" if key.startswith("sk_live_") else "test"
