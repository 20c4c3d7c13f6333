"""Wallets: money, key encryption, and the double-entry ledger on a real SQLite database."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from keel.config import load_settings
from keel.errors import BudgetExceeded, ConfigError, PaymentLoopGuard, StorageError
from keel.storage.migrations import migrate
from keel.storage.sql import Database
from keel.wallets import ledger
from keel.wallets.crypto import KeyCipher, new_key_material
from keel.wallets.ledger import CounterSpec, Hold
from keel.wallets.money import atomic_to_micros, fmt_usd, usd_to_micros
from keel.wallets.service import WalletService
from keel.wallets.settings import WalletSettings
from keel.wallets.tables import MIGRATIONS

KEY = "k" * 40


def test_money_is_exact_integer_micro_usd() -> None:
    assert usd_to_micros("2.00") == 2_000_000
    assert usd_to_micros("$0.02") == 20_000
    assert usd_to_micros("0.000001") == 1
    with pytest.raises(ValueError, match="micro-dollar"):
        usd_to_micros("0.0000001")
    with pytest.raises(ValueError, match="not an amount"):
        usd_to_micros("two dollars")
    assert atomic_to_micros(20_000, 6) == 20_000
    assert atomic_to_micros(10**16, 18) == 10_000  # $0.01 in an 18-decimal token
    assert atomic_to_micros(1, 18) == 1  # rounded up, never under-counted
    assert fmt_usd(1_980_000) == "$1.98"
    assert fmt_usd(125) == "$0.000125"


@pytest.mark.parametrize("amount", ["1e30", "9000000000000", "Infinity", "NaN", "-1e30",
                                    "1000000000.000001"])
def test_amounts_that_would_not_fit_the_books_are_refused(amount: str) -> None:
    with pytest.raises(ValueError, match=r"at most|plain decimal"):
        usd_to_micros(amount)


def test_key_cipher_round_trip_and_binding() -> None:
    c = KeyCipher(new_key_material())
    sealed = c.encrypt(b"secret-key-bytes", "w_1")
    assert b"secret" not in sealed.encode()
    assert c.decrypt(sealed, "w_1") == b"secret-key-bytes"
    with pytest.raises(StorageError, match="does not decrypt"):
        c.decrypt(sealed, "w_2")  # a ciphertext moved to another wallet row
    with pytest.raises(StorageError):
        KeyCipher("x" * 40).decrypt(sealed, "w_1")  # another key
    with pytest.raises(ConfigError, match="at least 32"):
        KeyCipher("short")
    assert "redacted" in repr(c)


def test_startup_fails_clearly_without_encryption_key(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db = Database(f"sqlite:///{tmp_path}/k.db")
    with pytest.raises(ConfigError, match=r"wallets\.encryption_key is not set"):
        WalletService(WalletSettings(enabled=True), db)
    toml = tmp_path / "keel.toml"
    toml.write_text('[wallets]\nenabled = true\nencryption_key = "${KEEL_TEST_WALLET_KEY}"\n')
    monkeypatch.delenv("KEEL_TEST_WALLET_KEY", raising=False)
    with pytest.raises(ConfigError, match="KEEL_TEST_WALLET_KEY is not set"):
        load_settings(toml)
    monkeypatch.setenv("KEEL_TEST_WALLET_KEY", KEY)
    s = load_settings(toml)
    assert KEY not in repr(s.wallets)
    WalletService(s.wallets, db)


@pytest.fixture
def svc(tmp_path: Path) -> WalletService:
    db = Database(f"sqlite:///{tmp_path}/ledger.db")
    migrate(db, MIGRATIONS)
    return WalletService(WalletSettings(enabled=True, encryption_key=KEY), db)  # type: ignore[arg-type]


def _hold(wallet_id: str, amount: int, session: str = "s", limit: int | None = 100_000,
          max_calls: int | None = None) -> Hold:
    spec = CounterSpec(f"session:t:a:{session}", "session budget", limit, max_calls,
                       time.time() + 3600)
    return Hold(tenant="t", agent="a", wallet_id=wallet_id, session_id=session,
                url="http://x/y", payee="0x" + "ab" * 20, network="eip155:84532",
                asset="0xusdc", amount=amount, counters=[spec], expires_at=time.time() + 60)


def test_every_operation_keeps_the_books_balanced(svc: WalletService) -> None:
    w = svc.create_wallet("t", "a")
    signer = svc.db.transaction(lambda c: svc.store.signer(c, w.id))
    assert signer.address == w.address
    svc.fund("t", "a", 1_000_000)
    tx = svc.db.transaction
    r1 = tx(lambda c: ledger.reserve(c, _hold(w.id, 30_000)))
    r2 = tx(lambda c: ledger.reserve(c, _hold(w.id, 20_000)))
    assert svc.balance(w) == {"available": 950_000, "held": 50_000}
    assert tx(lambda c: ledger.settle(c, r1, "0xabc"))
    assert not tx(lambda c: ledger.settle(c, r1, "0xabc"))  # idempotent
    assert tx(lambda c: ledger.release(c, r2, "refused"))
    assert not tx(lambda c: ledger.release(c, r2, "again"))
    assert svc.balance(w) == {"available": 970_000, "held": 0}
    assert tx(lambda c: ledger.refund(c, r1, "payee refunded"))
    assert svc.balance(w) == {"available": 1_000_000, "held": 0}
    report = tx(ledger.check_books)
    assert report.balanced, report
    assert report.entries == 6  # fund, 2 reserves, settle, release, refund


def test_balances_stay_inside_64_bit_integers(svc: WalletService) -> None:
    from keel.wallets.money import MAX_AMOUNT_MICROS, MAX_BALANCE_MICROS

    w = svc.create_wallet("t", "a")
    svc.create_wallet("t", "b")
    with pytest.raises(ValueError, match="at most"):
        svc.fund("t", "a", MAX_AMOUNT_MICROS + 1)
    for _ in range(MAX_BALANCE_MICROS // MAX_AMOUNT_MICROS):
        svc.fund("t", "a", MAX_AMOUNT_MICROS)
    with pytest.raises(ValueError, match="limit"):
        svc.fund("t", "a", 1)  # the wallet is full
    with pytest.raises(ValueError, match="limit"):
        svc.fund("t", "b", 1)  # and so is the tenant's funding account (it goes negative)
    assert svc.balance(w)["available"] == MAX_BALANCE_MICROS
    report = svc.db.transaction(ledger.check_books)
    assert report.balanced, report
    rows = svc.db.transaction(lambda c: c.exec_driver_sql(
        "SELECT typeof(balance) FROM ledger_accounts").all())
    assert {r[0] for r in rows} == {"integer"}


def test_reservation_refusals_roll_back_everything(svc: WalletService) -> None:
    w = svc.create_wallet("t", "a")
    svc.fund("t", "a", 50_000)
    tx = svc.db.transaction
    with pytest.raises(BudgetExceeded, match=r"wallet balance \$0.05 does not cover"):
        tx(lambda c: ledger.reserve(c, _hold(w.id, 60_000, limit=None)))
    tx(lambda c: ledger.reserve(c, _hold(w.id, 40_000, limit=45_000)))
    with pytest.raises(BudgetExceeded, match=r"session budget \$0.045: spent \$0.00, "
                                             r"reserved \$0.04, price \$0.01"):
        tx(lambda c: ledger.reserve(c, _hold(w.id, 10_000, limit=45_000)))
    tx(lambda c: ledger.reserve(c, _hold(w.id, 1_000, session="loop", max_calls=1)))
    with pytest.raises(PaymentLoopGuard, match="limit is 1") as refused:
        tx(lambda c: ledger.reserve(c, _hold(w.id, 1_000, session="loop", max_calls=1)))
    assert refused.value.retry_after is None  # a session's calls never come back
    minute = int(time.time() // 60)
    per_minute = CounterSpec(f"minute:t:a:{minute}", "per-minute loop guard", None, 1,
                             (minute + 2) * 60.0, resets_at=(minute + 1) * 60.0)
    hold = Hold(tenant="t", agent="a", wallet_id=w.id, session_id="m", url="http://x/y",
                payee="0x" + "ab" * 20, network="eip155:84532", asset="0xusdc", amount=1_000,
                counters=[per_minute], expires_at=time.time() + 60)
    tx(lambda c: ledger.reserve(c, hold))
    with pytest.raises(PaymentLoopGuard, match=r"resets in \d+ s") as refused:
        tx(lambda c: ledger.reserve(c, hold))
    assert refused.value.retry_after is not None and 1 <= refused.value.retry_after <= 60
    assert svc.balance(w) == {"available": 8_000, "held": 42_000}
    assert tx(ledger.check_books).balanced


def test_expired_holds_are_released_and_late_settlements_still_booked(
        svc: WalletService) -> None:
    w = svc.create_wallet("t", "a")
    svc.fund("t", "a", 100_000)
    tx = svc.db.transaction
    rid = tx(lambda c: ledger.reserve(c, _hold(w.id, 25_000)))
    assert tx(lambda c: ledger.expire(c, time.time())) == []  # not yet
    assert tx(lambda c: ledger.expire(c, time.time() + 120)) == [rid]
    assert svc.balance(w) == {"available": 100_000, "held": 0}
    # the server did settle after all: booked from available, flagged, books still balance
    assert tx(lambda c: ledger.settle(c, rid, "0xlate"))
    assert svc.balance(w) == {"available": 75_000, "held": 0}
    assert tx(ledger.check_books).balanced


def test_random_operation_sequences_always_balance(svc: WalletService) -> None:
    rng = random.Random(8)
    tx = svc.db.transaction
    wallets = [svc.create_wallet("t", f"a{i}") for i in range(3)]
    held: list[str] = []
    settled: list[str] = []
    for _ in range(300):
        op = rng.choice(["fund", "reserve", "reserve", "settle", "release", "refund"])
        w = rng.choice(wallets)
        try:
            if op == "fund":
                svc.fund("t", w.agent, rng.randint(1, 50_000))
            elif op == "reserve":
                held.append(tx(lambda c, w=w: ledger.reserve(
                    c, _hold(w.id, rng.randint(1, 30_000), session=rng.choice("xyz"),
                             limit=rng.choice([None, 200_000])))))
            elif op == "settle" and held:
                pid = held.pop(rng.randrange(len(held)))
                tx(lambda c, pid=pid: ledger.settle(c, pid, "0x1"))
                settled.append(pid)
            elif op == "release" and held:
                pid = held.pop(rng.randrange(len(held)))
                tx(lambda c, pid=pid: ledger.release(c, pid, "x"))
            elif op == "refund" and settled:
                pid = settled.pop(rng.randrange(len(settled)))
                tx(lambda c, pid=pid: ledger.refund(c, pid))
        except BudgetExceeded:
            pass
        report = tx(ledger.check_books)
        assert report.balanced, (op, report)


@pytest.mark.parametrize("text", ["\u0663", "\uff13", "1e2", "1E2", "Infinity", "NaN",
                                  "1_000", "+2", "2 .00", ""])
def test_usd_amounts_are_plain_ascii_decimals(text: str) -> None:
    with pytest.raises(ValueError, match="plain decimal"):
        usd_to_micros(text)
    assert usd_to_micros(" $2.50 ") == 2_500_000 and usd_to_micros(".5") == 500_000
