from __future__ import annotations

from checkout.server import App

def test_checkout_records_an_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CHECKOUT_PAYMENT_KEY", "sk_test_local")
    app = App(f"sqlite:///{tmp_path / 'app.db'}")
    out = app.checkout({"items": [{"sku": "sku-3", "qty": 1}]})
    assert out == {"total_cents": 1800, "payment_mode": "test"}
    assert app.db.execute("SELECT count(*) FROM orders")[0][0] == 1
