"""Incidents and the audit of every remediation step (inputs, outputs, duration, cost)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    update,
)

from keel.storage.migrations import Migration

# statuses: open -> running -> awaiting_approval -> resolved | failed | rolled_back
ACTIVE = ("open", "running", "awaiting_approval")
RESOLVED, FAILED, ROLLED_BACK = "resolved", "failed", "rolled_back"

meta = MetaData()
incidents = Table(
    "remediation_incidents",
    meta,
    Column("id", String(40), primary_key=True),
    Column("service", String(64), nullable=False),
    # the service while the incident is active, NULL after: one active incident per service
    Column("active_service", String(64), unique=True),
    Column("status", String(32), nullable=False),
    Column("trigger", String(32), nullable=False),  # detector | alertmanager | api
    Column("opened_at", Float, nullable=False),
    Column("first_error_at", Float),
    Column("attached", Integer, nullable=False, default=0),  # later alerts, same incident
    Column("evidence", Text, nullable=False),
    Column("outcome", Text),
    Column("updated_at", Float, nullable=False),
    Index("remediation_incidents_service", "service", "opened_at"),
)
steps = Table(
    "remediation_steps",
    meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(40), nullable=False),
    Column("step", String(40), nullable=False),
    Column("status", String(16), nullable=False),  # ok | failed
    Column("started_at", Float, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("cpu_s", Float, nullable=False, default=0.0),
    Column("input", Text, nullable=False),
    Column("output", Text, nullable=False),
    Index("remediation_steps_incident", "incident_id", "id"),
)

MIGRATIONS = [Migration("remediation/0001_incidents",
                        lambda c: meta.create_all(c, tables=[incidents, steps]))]


def _dumps(v: Any) -> str:
    return orjson.dumps(v, default=str).decode()


@dataclass(frozen=True)
class Incident:
    id: str
    service: str
    status: str
    trigger: str
    opened_at: float
    first_error_at: float | None
    attached: int
    evidence: dict[str, Any]
    outcome: dict[str, Any] | None
    updated_at: float

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "incident", "service": self.service,
                "status": self.status, "trigger": self.trigger, "opened_at": self.opened_at,
                "first_error_at": self.first_error_at, "attached": self.attached,
                "evidence": self.evidence, "outcome": self.outcome,
                "updated_at": self.updated_at}


def _row(r: Any) -> Incident:
    return Incident(r.id, r.service, r.status, r.trigger, r.opened_at, r.first_error_at,
                    r.attached, orjson.loads(r.evidence),
                    orjson.loads(r.outcome) if r.outcome else None, r.updated_at)


def open_or_attach(c: Connection, service: str, trigger: str, evidence: dict[str, Any],
                   first_error_at: float | None) -> tuple[Incident, bool]:
    """A new incident, or the service's active one with ``attached`` bumped (False).
    Two concurrent openers: the unique ``active_service`` makes the loser's insert fail
    (IntegrityError); its caller retries and attaches."""
    now = time.time()
    row = c.execute(select(incidents).where(incidents.c.active_service == service)).first()
    if row is not None:
        c.execute(update(incidents).where(incidents.c.id == row.id)
                  .values(attached=incidents.c.attached + 1, updated_at=now))
        got = get(c, row.id)
        assert got is not None
        return got, False
    iid = "inc_" + secrets.token_hex(8)
    c.execute(incidents.insert().values(
        id=iid, service=service, active_service=service, status="open", trigger=trigger,
        opened_at=now, first_error_at=first_error_at, attached=0, evidence=_dumps(evidence),
        updated_at=now))
    got = get(c, iid)
    assert got is not None
    return got, True


def get(c: Connection, iid: str) -> Incident | None:
    row = c.execute(select(incidents).where(incidents.c.id == iid)).first()
    return _row(row) if row is not None else None


def recent(c: Connection, service: str | None = None, limit: int = 50) -> list[Incident]:
    q = select(incidents).order_by(incidents.c.opened_at.desc()).limit(limit)
    if service:
        q = q.where(incidents.c.service == service)
    return [_row(r) for r in c.execute(q)]


def set_status(c: Connection, iid: str, status: str,
               outcome: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {"status": status, "updated_at": time.time()}
    if status not in ACTIVE:
        values["active_service"] = None
    if outcome is not None:
        values["outcome"] = _dumps(outcome)
    c.execute(update(incidents).where(incidents.c.id == iid).values(**values))


def add_step(c: Connection, iid: str, step: str, status: str, started_at: float,
             duration_s: float, inp: Any, out: Any, cost_usd: float = 0.0,
             cpu_s: float = 0.0) -> None:
    c.execute(steps.insert().values(
        incident_id=iid, step=step, status=status, started_at=started_at,
        duration_s=duration_s, cost_usd=cost_usd, cpu_s=cpu_s, input=_dumps(inp),
        output=_dumps(out)))


def list_steps(c: Connection, iid: str) -> list[dict[str, Any]]:
    rows = c.execute(select(steps).where(steps.c.incident_id == iid).order_by(steps.c.id))
    return [{"step": r.step, "status": r.status, "started_at": r.started_at,
             "duration_s": round(r.duration_s, 4), "cost_usd": r.cost_usd, "cpu_s": r.cpu_s,
             "input": orjson.loads(r.input), "output": orjson.loads(r.output)} for r in rows]
