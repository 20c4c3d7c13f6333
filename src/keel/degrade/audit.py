"""The audit log of every level flip: when, scope, from/to, who or what, metric values."""

from __future__ import annotations

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
)

from keel.storage.migrations import Migration

meta = MetaData()
flips = Table(
    "degrade_flips",
    meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("scope", String(128), nullable=False),  # "*" (global) or a tenant
    Column("from_level", String(32), nullable=False),
    Column("to_level", String(32), nullable=False),
    Column("reason", String(200), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("metrics", Text, nullable=False),
    Index("degrade_flips_ts", "ts"),
)

MIGRATIONS = [Migration("degrade/0001_flips", lambda c: meta.create_all(c, tables=[flips]))]


@dataclass(frozen=True)
class Flip:
    ts: float
    scope: str
    from_level: str
    to_level: str
    reason: str
    actor: str
    metrics: dict[str, Any]


def record(c: Connection, flip: Flip) -> None:
    c.execute(flips.insert().values(
        ts=flip.ts, scope=flip.scope, from_level=flip.from_level, to_level=flip.to_level,
        reason=flip.reason, actor=flip.actor, metrics=orjson.dumps(flip.metrics).decode()))


def recent(c: Connection, limit: int = 100, since: float | None = None) -> list[Flip]:
    q = select(flips).order_by(flips.c.ts.desc(), flips.c.id.desc()).limit(limit)
    if since is not None:
        q = q.where(flips.c.ts >= since)
    return [Flip(r.ts, r.scope, r.from_level, r.to_level, r.reason, r.actor,
                 orjson.loads(r.metrics)) for r in c.execute(q)]
