from __future__ import annotations

import pytest

from checkout.pricing import CheckoutError, cart_total


def test_subtotal(db):
    assert cart_total(db, [("sku-1", 2), ("sku-2", 1)]) == 4900


def test_unknown_product(db):
    with pytest.raises(CheckoutError):
        cart_total(db, [("nope", 1)])


def test_unknown_code(db):
    with pytest.raises(CheckoutError):
        cart_total(db, [("sku-1", 1)], "BOGUS")
