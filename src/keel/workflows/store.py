"""Registered state machines (versioned), executions and their history events (SQL Core).

DBOS owns the durable run; these tables are what the API shows. An event carries a key
that is deterministic within its execution, so a workflow replayed after a crash writes
the same events again and the duplicates are ignored.
"""

from __future__ import annotations

import secrets
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
    UniqueConstraint,
    and_,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from keel.storage.migrations import Migration

RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED = (
    "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED")
STATUSES = (RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED)
DETAIL_LIMIT = 32 * 1024  # an event keeps at most this much of an input/output

meta = MetaData()
machines = Table(
    "workflow_definitions", meta,
    Column("name", String(80), nullable=False),
    Column("version", Integer, nullable=False),
    Column("definition", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(200), nullable=False),
    UniqueConstraint("name", "version", name="workflow_definitions_name_version"),
)
executions = Table(
    "workflow_executions", meta,
    Column("id", String(48), primary_key=True),
    Column("workflow", String(80), nullable=False),
    Column("version", Integer, nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("started_by", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("input", Text, nullable=False),
    Column("output", Text),
    Column("error", String(200)),
    Column("cause", Text),
    Column("started_at", Float, nullable=False),
    Column("stopped_at", Float),
    Index("workflow_executions_started", "workflow", "started_at"),
    Index("workflow_executions_status", "status", "started_at"),
)
events = Table(
    "workflow_events", meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("execution_id", String(48), nullable=False),
    Column("key", String(200), nullable=False),
    Column("at", Float, nullable=False),
    Column("type", String(64), nullable=False),
    Column("state", String(200)),
    Column("detail", Text),
    UniqueConstraint("execution_id", "key", name="workflow_events_key"),
)

MIGRATIONS = [
    Migration("workflows/0001_tables",
              lambda c: meta.create_all(c, tables=[machines, executions, events])),
]


def new_execution_id() -> str:
    return "exe_" + secrets.token_hex(12)


def _json(v: Any) -> str:
    return orjson.dumps(v).decode()


@dataclass(frozen=True)
class Execution:
    id: str
    workflow: str
    version: int
    tenant: str
    started_by: str
    status: str
    input: Any
    output: Any
    error: str | None
    cause: str | None
    started_at: float
    stopped_at: float | None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "workflow.execution", "workflow": self.workflow,
                "version": self.version, "tenant": self.tenant, "started_by": self.started_by,
                "status": self.status, "input": self.input, "output": self.output,
                "error": self.error, "cause": self.cause, "started_at": self.started_at,
                "stopped_at": self.stopped_at}


def _execution(r: Any) -> Execution:
    m = r._mapping
    return Execution(id=m["id"], workflow=m["workflow"], version=m["version"],
                     tenant=m["tenant"], started_by=m["started_by"], status=m["status"],
                     input=orjson.loads(m["input"]),
                     output=orjson.loads(m["output"]) if m["output"] is not None else None,
                     error=m["error"], cause=m["cause"], started_at=m["started_at"],
                     stopped_at=m["stopped_at"])


# -- definitions --------------------------------------------------------------------------


def put_definition(c: Connection, name: str, definition: dict[str, Any], by: str,
                   now: float) -> int:
    """Store a new version (or return the latest one when the definition is unchanged)."""
    text = _json(definition)
    latest = c.execute(select(machines.c.version, machines.c.definition)
                       .where(machines.c.name == name)
                       .order_by(machines.c.version.desc()).limit(1)).first()
    if latest is not None and latest[1] == text:
        return int(latest[0])
    version = (int(latest[0]) if latest else 0) + 1
    c.execute(machines.insert().values(name=name, version=version, definition=text,
                                       created_at=now, created_by=by))
    return version


def get_definition(c: Connection, name: str, version: int | None = None
                   ) -> tuple[int, dict[str, Any]] | None:
    q = select(machines.c.version, machines.c.definition).where(machines.c.name == name)
    q = (q.where(machines.c.version == version) if version is not None
         else q.order_by(machines.c.version.desc()).limit(1))
    r = c.execute(q).first()
    return None if r is None else (int(r[0]), orjson.loads(r[1]))


def list_definitions(c: Connection) -> list[dict[str, Any]]:
    q = (select(machines.c.name, func.max(machines.c.version).label("version"),
                func.max(machines.c.created_at).label("updated_at"))
         .group_by(machines.c.name).order_by(machines.c.name))
    return [{"name": r[0], "version": int(r[1]), "updated_at": r[2]} for r in c.execute(q)]


# -- executions ---------------------------------------------------------------------------


def insert_execution(c: Connection, *, execution_id: str, workflow: str, version: int,
                     tenant: str, started_by: str, data: Any, now: float) -> None:
    c.execute(executions.insert().values(
        id=execution_id, workflow=workflow, version=version, tenant=tenant,
        started_by=started_by, status=RUNNING, input=_json(data), started_at=now))


def get_execution(c: Connection, execution_id: str) -> Execution | None:
    r = c.execute(select(executions).where(executions.c.id == execution_id)).first()
    return None if r is None else _execution(r)


def list_executions(c: Connection, *, workflow: str | None, status: str | None,
                    tenant: str | None, limit: int) -> list[Execution]:
    q = select(executions)
    if workflow:
        q = q.where(executions.c.workflow == workflow)
    if status:
        q = q.where(executions.c.status == status)
    if tenant:
        q = q.where(executions.c.tenant == tenant)
    q = q.order_by(executions.c.started_at.desc()).limit(limit)
    return [_execution(r) for r in c.execute(q)]


def finish_execution(c: Connection, execution_id: str, status: str, *, output: Any = None,
                     error: str | None = None, cause: str | None = None, now: float) -> bool:
    """RUNNING -> a final status, once (a stopped execution stays ABORTED)."""
    res = c.execute(update(executions).where(and_(executions.c.id == execution_id,
                                                  executions.c.status == RUNNING))
                    .values(status=status, output=None if output is None else _json(output),
                            error=error, cause=cause, stopped_at=now))
    return bool(res.rowcount)


# -- history --------------------------------------------------------------------------------


def _clip(v: Any) -> str | None:
    if v is None:
        return None
    text = _json(v)
    if len(text) > DETAIL_LIMIT:
        return _json({"truncated": True, "size": len(text), "head": text[:1024]})
    return text


def add_event(c: Connection, execution_id: str, key: str, type_: str, state: str | None,
              detail: Any, now: float) -> None:
    try:
        with c.begin_nested():
            c.execute(events.insert().values(execution_id=execution_id, key=key, at=now,
                                             type=type_, state=state, detail=_clip(detail)))
    except IntegrityError:
        pass  # the same event, written again by a workflow replayed after a crash


def history(c: Connection, execution_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    q = (select(events).where(events.c.execution_id == execution_id)
         .order_by(events.c.id).limit(limit))
    out = []
    for i, r in enumerate(c.execute(q), start=1):
        m = r._mapping
        out.append({"id": i, "timestamp": m["at"], "type": m["type"], "state": m["state"],
                    "detail": orjson.loads(m["detail"]) if m["detail"] else None})
    return out
