"""The approvals action ledger is keyed by (tenant, idempotency key): the migration from
the key-only ledger, and the ledger's refusal to treat another request's claim as done."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection

from keel.approvals import store
from keel.approvals.models import AUTO_APPROVED, Proposal
from keel.storage.migrations import migrate
from keel.storage.sql import Database


def _db(tmp_path: Path) -> Database:
    return Database(f"sqlite:///{tmp_path / 'keel.db'}")


def _proposal(tenant: str, to: str, key: str = "order-42") -> Proposal:
    return Proposal(action="pay", arguments={"to": to}, tenant=tenant, risk_level="LOW",
                    idempotency_key=key)


def test_migration_scopes_existing_ledger_rows_by_their_approvals_tenant(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path)
    migrate(db, store.MIGRATIONS[:1])
    p = _proposal("globex", "GLOBEX-SECRET-ORDER")

    def old_rows(c: Connection) -> None:
        store.insert(c, p, approval_id="apr_g", workflow_id="w", kind="action",
                     policy="x", status=AUTO_APPROVED, timeout_s=60, now=1.0)
        v1 = store._ledger_v1
        c.execute(v1.insert().values(idempotency_key="order-42", approval_id="apr_g",
                                     action="pay", started_at=1.0, attempts=1,
                                     finished_at=2.0, result='{"paid":"GLOBEX"}'))
        c.execute(v1.insert().values(idempotency_key="orphan", approval_id="apr_gone",
                                     action="pay", started_at=1.0, attempts=1))

    db.transaction(old_rows)
    assert migrate(db, store.MIGRATIONS) == ["approvals/0002_tenant_scoped_ledger"]
    rows = db.transaction(lambda c: {r.idempotency_key: r._mapping for r in
                                     c.execute(store.ledger.select())})
    assert rows["order-42"]["tenant"] == "globex"
    assert rows["order-42"]["args_hash"] == p.arguments_hash()
    assert rows["order-42"]["result"] == '{"paid":"GLOBEX"}'
    assert rows["orphan"]["tenant"] == store.UNKNOWN_TENANT
    # globex's finished entry is globex's alone: acme's key of the same name is a new claim
    acme = _proposal("acme", "acme-o9").arguments_hash()
    claim = db.transaction(lambda c: store.ledger_begin(c, "acme", "order-42", "apr_a",
                                                        "pay", acme, 3.0))
    assert claim.prior is None and not claim.mismatch
    again = db.transaction(lambda c: store.ledger_begin(
        c, "globex", "order-42", "apr_g2", "pay", p.arguments_hash(), 3.0))
    assert again.prior is not None and again.prior["approval_id"] == "apr_g"


def test_ledger_refuses_a_key_claimed_for_other_arguments(tmp_path: Path) -> None:
    db = _db(tmp_path)
    migrate(db, store.MIGRATIONS)
    first = _proposal("acme", "a").arguments_hash()
    db.transaction(lambda c: store.ledger_begin(c, "acme", "k", "apr_1", "pay", first, 1.0))
    db.transaction(lambda c: store.ledger_end(c, "acme", "k", {"paid": "a"}, None, 2.0))
    other = _proposal("acme", "b").arguments_hash()
    claim = db.transaction(lambda c: store.ledger_begin(c, "acme", "k", "apr_2", "pay",
                                                        other, 3.0))
    assert claim.mismatch and claim.prior is None
    claim = db.transaction(lambda c: store.ledger_begin(c, "acme", "k", "apr_3", "refund",
                                                        first, 3.0))
    assert claim.mismatch and claim.prior is None
