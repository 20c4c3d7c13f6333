"""Approval records, one-time references, the audit log and the action ledger (SQL Core).

Every function takes a connection inside the caller's transaction, so a decision, the
reference it consumes and its audit row commit together or not at all.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    update,
)

from keel.approvals.models import PENDING, Approval, Proposal
from keel.storage.migrations import Migration

meta = MetaData()
approvals = Table(
    "approvals", meta,
    Column("id", String(40), primary_key=True),
    Column("workflow_id", String(80), nullable=False),
    Column("kind", String(16), nullable=False),  # "action" | "asl"
    Column("tenant", String(128), nullable=False),
    Column("action", String(200), nullable=False),
    Column("arguments", Text, nullable=False),
    Column("args_hash", String(64), nullable=False),
    Column("amount", Float),
    Column("risk_level", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("policy", String(200), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("outcome", String(16)),
    Column("result", Text),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("decided_at", Float),
    Column("decided_by", String(200)),
    Column("decided_ip", String(64)),
    Column("decided_via", String(32)),
    Column("note", Text),
    Column("reminders_sent", Integer, nullable=False, default=0),
    Column("finished_at", Float),
    Index("approvals_status", "status", "created_at"),
    Index("approvals_tenant", "tenant", "created_at"),
)
refs = Table(
    "approval_refs", meta,
    Column("ref_hash", String(64), primary_key=True),
    Column("approval_id", String(40), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float),
    Index("approval_refs_approval", "approval_id"),
)
audit = Table(
    "approval_audit", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("approval_id", String(40)),
    Column("at", Float, nullable=False),
    Column("event", String(32), nullable=False),
    Column("accepted", Boolean, nullable=False, default=True),
    Column("actor", String(200)),
    Column("ip", String(64)),
    Column("channel", String(32)),
    Column("detail", Text),
    Index("approval_audit_approval", "approval_id", "at"),
)
# The action ledger: one row per (tenant, idempotency key) an action ran (or is running)
# under. The tenant is part of the key so one tenant's key can never find, block or reveal
# another tenant's run; action and args_hash say which request the key was claimed for.
ledger = Table(
    "approval_actions", meta,
    Column("tenant", String(128), primary_key=True),
    Column("idempotency_key", String(200), primary_key=True),
    Column("approval_id", String(40), nullable=False),
    Column("action", String(200), nullable=False),
    Column("args_hash", String(64)),  # NULL only for rows older than the tenant scoping
    Column("started_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("finished_at", Float),
    Column("result", Text),
    Column("error", Text),
)

# The ledger as approvals/0001 created it (keyed by idempotency key alone); only the
# migrations use it.
_v1_meta = MetaData()
_ledger_v1 = Table(
    "approval_actions", _v1_meta,
    Column("idempotency_key", String(200), primary_key=True),
    Column("approval_id", String(40), nullable=False),
    Column("action", String(200), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("finished_at", Float),
    Column("result", Text),
    Column("error", Text),
)

# Tenant given to ledger rows whose approval no longer exists: no request is filed under
# the empty tenant, so such a row can never match (or block) a new run.
UNKNOWN_TENANT = ""


def _create_v1(c: Connection) -> None:
    meta.create_all(c, tables=[approvals, refs, audit])
    _v1_meta.create_all(c, tables=[_ledger_v1])


def _tenant_scoped_ledger(c: Connection) -> None:
    """Rebuild the ledger keyed by (tenant, idempotency key). Each old row takes the tenant
    and arguments hash of the approval that claimed it (the empty tenant when that approval
    is gone). The rows are read first and the old table dropped before the new one is made,
    so no constraint name of the old table is left behind to collide with (PostgreSQL)."""
    old = [dict(r._mapping) for r in c.execute(select(_ledger_v1))]
    owners = {r[0]: (r[1], r[2]) for r in c.execute(
        select(approvals.c.id, approvals.c.tenant, approvals.c.args_hash))}
    c.exec_driver_sql("DROP TABLE approval_actions")
    meta.create_all(c, tables=[ledger])
    for r in old:
        tenant, args_hash = owners.get(r["approval_id"], (UNKNOWN_TENANT, None))
        c.execute(ledger.insert().values(tenant=tenant, args_hash=args_hash, **r))


MIGRATIONS = [
    Migration("approvals/0001_tables", _create_v1),
    Migration("approvals/0002_tenant_scoped_ledger", _tenant_scoped_ledger),
]


def new_id() -> str:
    return "apr_" + secrets.token_hex(12)


def hash_ref(ref: str) -> str:
    return hashlib.sha256(b"keel-approval-ref:" + ref.encode()).hexdigest()


def _plain(r: Any) -> dict[str, Any]:
    return {str(k): v for k, v in r._mapping.items()}


def _row(r: Any) -> Approval:
    m = r._mapping
    return Approval(
        id=m["id"], workflow_id=m["workflow_id"], kind=m["kind"], tenant=m["tenant"],
        action=m["action"], arguments=orjson.loads(m["arguments"]), args_hash=m["args_hash"],
        amount=m["amount"], risk_level=m["risk_level"], reason=m["reason"],
        requested_by=m["requested_by"], policy=m["policy"], status=m["status"],
        outcome=m["outcome"], result=orjson.loads(m["result"]) if m["result"] else None,
        created_at=m["created_at"], expires_at=m["expires_at"], decided_at=m["decided_at"],
        decided_by=m["decided_by"], decided_ip=m["decided_ip"], decided_via=m["decided_via"],
        reminders_sent=m["reminders_sent"] or 0, finished_at=m["finished_at"],
    )


def insert(c: Connection, p: Proposal, *, approval_id: str, workflow_id: str, kind: str,
           policy: str, status: str, timeout_s: float, now: float) -> None:
    c.execute(approvals.insert().values(
        id=approval_id, workflow_id=workflow_id, kind=kind, tenant=p.tenant, action=p.action,
        arguments=orjson.dumps(p.arguments).decode(), args_hash=p.arguments_hash(),
        amount=p.amount, risk_level=p.risk_level, reason=p.reason,
        requested_by=p.requested_by, policy=policy,
        idempotency_key=p.idempotency_key or approval_id, status=status, created_at=now,
        expires_at=now + timeout_s, reminders_sent=0,
        decided_at=now if status != PENDING else None,
        decided_by="policy" if status != PENDING else None,
        decided_via="policy" if status != PENDING else None,
    ))


def get(c: Connection, approval_id: str) -> Approval | None:
    r = c.execute(select(approvals).where(approvals.c.id == approval_id)).first()
    return _row(r) if r else None


def idempotency_key(c: Connection, approval_id: str) -> str:
    return str(c.execute(select(approvals.c.idempotency_key)
                         .where(approvals.c.id == approval_id)).scalar_one())


@dataclass(frozen=True)
class ListFilter:
    status: str | None = None
    tenant: str | None = None
    action: str | None = None
    limit: int = 100
    offset: int = 0


def query(c: Connection, f: ListFilter) -> list[Approval]:
    q = select(approvals).order_by(approvals.c.created_at.desc())
    if f.status:
        q = q.where(approvals.c.status == f.status)
    if f.tenant:
        q = q.where(approvals.c.tenant == f.tenant)
    if f.action:
        q = q.where(approvals.c.action == f.action)
    return [_row(r) for r in c.execute(q.limit(f.limit).offset(f.offset))]


def counts(c: Connection) -> dict[str, int]:
    rows = c.execute(select(approvals.c.status, func.count()).group_by(approvals.c.status))
    return {r[0]: int(r[1]) for r in rows}


def undelivered(c: Connection) -> list[tuple[str, str, str]]:
    """(approval id, workflow id, status) of every unfinished approval, for reconciliation."""
    q = select(approvals.c.id, approvals.c.workflow_id, approvals.c.status).where(
        approvals.c.finished_at.is_(None), approvals.c.kind == "action")
    return [(r[0], r[1], r[2]) for r in c.execute(q)]


# --- decisions --------------------------------------------------------------------------


def set_decision(c: Connection, approval_id: str, status: str, *, actor: str, ip: str | None,
                 via: str, note: str | None, now: float) -> bool:
    """Move a pending approval to ``status``; False when it was no longer pending."""
    res = c.execute(update(approvals).where(
        approvals.c.id == approval_id, approvals.c.status == PENDING,
    ).values(status=status, decided_at=now, decided_by=actor, decided_ip=ip, decided_via=via,
             note=note))
    return res.rowcount == 1


def finish(c: Connection, approval_id: str, outcome: str, result: Any, now: float) -> None:
    c.execute(update(approvals).where(approvals.c.id == approval_id).values(
        outcome=outcome, result=orjson.dumps(result).decode(), finished_at=now))


def set_task_result(c: Connection, approval_id: str, value: dict[str, Any]) -> None:
    """What the decider sent back to a waiting ASL task (output, or error and cause)."""
    c.execute(update(approvals).where(approvals.c.id == approval_id)
              .values(result=orjson.dumps(value).decode()))


def decision_detail(c: Connection, approval_id: str) -> tuple[str | None, Any]:
    """(the decider's note, the task result set at decision time) of an ASL approval."""
    r = c.execute(select(approvals.c.note, approvals.c.result)
                  .where(approvals.c.id == approval_id)).first()
    if r is None:
        return None, None
    return r[0], orjson.loads(r[1]) if r[1] else None


def pending_of_workflow(c: Connection, workflow_id: str) -> list[str]:
    """Pending approvals a workflow (or its Map/Parallel children) waits for."""
    q = select(approvals.c.id).where(
        approvals.c.status == PENDING,
        (approvals.c.workflow_id == workflow_id)
        | approvals.c.workflow_id.startswith(workflow_id + "."))
    return [r[0] for r in c.execute(q)]


def bump_reminders(c: Connection, approval_id: str) -> None:
    c.execute(update(approvals).where(approvals.c.id == approval_id)
              .values(reminders_sent=approvals.c.reminders_sent + 1))


# --- one-time references -----------------------------------------------------------------


def new_ref(c: Connection, approval_id: str, channel: str, expires_at: float, now: float) -> str:
    """A random reference for links and buttons; only its hash is stored."""
    ref = secrets.token_urlsafe(24)
    c.execute(refs.insert().values(ref_hash=hash_ref(ref), approval_id=approval_id,
                                   channel=channel, created_at=now, expires_at=expires_at))
    return ref


def lookup_ref(c: Connection, ref: str) -> dict[str, Any] | None:
    r = c.execute(select(refs).where(refs.c.ref_hash == hash_ref(ref))).first()
    return _plain(r) if r else None


def use_ref(c: Connection, ref: str, now: float) -> bool:
    res = c.execute(update(refs).where(refs.c.ref_hash == hash_ref(ref),
                                       refs.c.used_at.is_(None)).values(used_at=now))
    return res.rowcount == 1


# --- audit and the action ledger -------------------------------------------------------------


def add_audit(c: Connection, approval_id: str | None, event: str, *, accepted: bool = True,
              actor: str | None = None, ip: str | None = None, channel: str | None = None,
              detail: str | None = None, now: float | None = None) -> None:
    c.execute(audit.insert().values(
        approval_id=approval_id, at=now or time.time(), event=event, accepted=accepted,
        actor=actor, ip=ip, channel=channel, detail=detail))


def audit_rows(c: Connection, approval_id: str | None = None, limit: int = 200
               ) -> list[dict[str, Any]]:
    q = select(audit).order_by(audit.c.id.desc()).limit(limit)
    if approval_id is not None:
        q = q.where(audit.c.approval_id == approval_id)
    return [_plain(r) for r in c.execute(q)]


@dataclass(frozen=True)
class LedgerClaim:
    """What :func:`ledger_begin` found: ``prior`` is the finished entry when the action
    already ran for this request; ``mismatch`` says the key was claimed for another
    request (another action or other arguments), which must neither run nor reuse it."""

    prior: dict[str, Any] | None = None
    mismatch: bool = False


def _ledger_row(tenant: str, key: str) -> Any:
    return (ledger.c.tenant == tenant) & (ledger.c.idempotency_key == key)


def ledger_begin(c: Connection, tenant: str, key: str, approval_id: str, action: str,
                 args_hash: str, now: float) -> LedgerClaim:
    """Claim ``key`` of ``tenant`` for a run of ``action`` with these arguments."""
    r = c.execute(select(ledger).where(_ledger_row(tenant, key))).first()
    if r is None:
        c.execute(ledger.insert().values(tenant=tenant, idempotency_key=key,
                                         approval_id=approval_id, action=action,
                                         args_hash=args_hash, started_at=now, attempts=1))
        return LedgerClaim()
    m = r._mapping
    if m["action"] != action or (m["args_hash"] is not None and m["args_hash"] != args_hash):
        return LedgerClaim(mismatch=True)
    if m["finished_at"] is not None:
        return LedgerClaim(prior=_plain(r))
    c.execute(update(ledger).where(_ledger_row(tenant, key))
              .values(attempts=ledger.c.attempts + 1, started_at=now))
    return LedgerClaim()


def ledger_forget(c: Connection, tenant: str, key: str) -> None:
    """Drop a claim whose run did not happen, so the approval can be used again."""
    c.execute(ledger.delete().where(_ledger_row(tenant, key)))


def ledger_end(c: Connection, tenant: str, key: str, result: Any, error: str | None,
               now: float) -> None:
    c.execute(update(ledger).where(_ledger_row(tenant, key)).values(
        finished_at=now, result=orjson.dumps(result).decode(), error=error))


def key_used_for_other(c: Connection, p: Proposal) -> Approval | None:
    """An approval of ``p``'s tenant filed under ``p``'s idempotency key for another
    action or other arguments (None when the key is new or was used for this request)."""
    if p.idempotency_key is None:
        return None
    r = c.execute(select(approvals).where(
        approvals.c.tenant == p.tenant, approvals.c.idempotency_key == p.idempotency_key,
        (approvals.c.action != p.action) | (approvals.c.args_hash != p.arguments_hash()),
    ).limit(1)).first()
    return _row(r) if r else None
