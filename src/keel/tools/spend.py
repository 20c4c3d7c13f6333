"""Durable session spend: what the tool calls of a session have spent, in integer cents.

Cedar policies read ``context.session.spend_cents``; a policy such as
``forbid ... when { context.session.spend_cents + context.amount_cents > 10000 }`` is only a
cap if the number cannot be reset and concurrent calls cannot all see the same old value.
So the counters live in SQL (SQLite or PostgreSQL, like the rest of keel's state: a restart
or a second worker sees the same spend), and an allowed call's amount is *reserved* in the
same step that checks the value the decision was made on (a compare-and-set on
``spent + reserved``), then committed when the tool succeeded or released when it did not.
Policies see ``spent + reserved``: money in flight counts.

Each counter is keyed by tenant and a session key: ``s:<x-keel-session>`` for a named
session, ``a:<agent>`` for the calls an agent makes without one (see :func:`session_key`).
A reservation left behind by a process that died mid-call stays counted (fail closed).
"""

from __future__ import annotations

import time

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    MetaData,
    String,
    Table,
    bindparam,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Insert

from keel.storage.migrations import Migration
from keel.storage.sql import Database

meta = MetaData()
session_spend = Table(
    "tool_session_spend",
    meta,
    Column("tenant", String(128), primary_key=True),
    Column("session", String(300), primary_key=True),  # s:<session id> | a:<agent>
    Column("spent", BigInteger, nullable=False, default=0),
    Column("reserved", BigInteger, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

MIGRATIONS = [
    Migration("tools/0001_session_spend", lambda c: meta.create_all(c, tables=[session_spend])),
]

_ROW = (session_spend.c.tenant == bindparam("t")) & (session_spend.c.session == bindparam("s"))
_RESERVE = (update(session_spend)
            .where(_ROW, session_spend.c.spent + session_spend.c.reserved == bindparam("seen"))
            .values(reserved=session_spend.c.reserved + bindparam("c"),
                    updated_at=bindparam("now")))
_COMMIT = (update(session_spend).where(_ROW)
           .values(reserved=session_spend.c.reserved - bindparam("c"),
                   spent=session_spend.c.spent + bindparam("c"), updated_at=bindparam("now")))
_RELEASE = (update(session_spend).where(_ROW)
            .values(reserved=session_spend.c.reserved - bindparam("c"),
                    updated_at=bindparam("now")))


def session_key(session_id: str, agent: str) -> str:
    """The counter a call counts against: its ``x-keel-session``, or, without one, the
    agent's own sessionless counter (so leaving the header out never reads as 0)."""
    return f"s:{session_id}" if session_id else f"a:{agent}"


class SqlSessionSpend:
    """:class:`keel.tools.ports.SessionSpend` in the keel database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def spent_cents(self, tenant: str, session: str) -> int:
        def read(c: Connection) -> int:
            row = c.execute(select(session_spend.c.spent, session_spend.c.reserved)
                            .where(_ROW), {"t": tenant, "s": session}).first()
            return 0 if row is None else int(row.spent) + int(row.reserved)

        return await self.db.run(read)

    async def reserve(self, tenant: str, session: str, cents: int, seen: int) -> bool:
        def run(c: Connection) -> bool:
            now = time.time()
            _insert_ignore(c, tenant=tenant, session=session, spent=0, reserved=0,
                           updated_at=now)
            done = c.execute(_RESERVE, {"t": tenant, "s": session, "seen": seen, "c": cents,
                                        "now": now})
            return bool(done.rowcount == 1)

        return await self.db.run(run)

    async def commit(self, tenant: str, session: str, cents: int) -> None:
        await self.db.run(lambda c: c.execute(
            _COMMIT, {"t": tenant, "s": session, "c": cents, "now": time.time()}))

    async def release(self, tenant: str, session: str, cents: int) -> None:
        await self.db.run(lambda c: c.execute(
            _RELEASE, {"t": tenant, "s": session, "c": cents, "now": time.time()}))


def _insert_ignore(conn: Connection, **values: object) -> None:
    stmt: Insert
    if conn.dialect.name == "postgresql":
        stmt = postgresql.insert(session_spend).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(session_spend).values(**values).on_conflict_do_nothing()
    conn.execute(stmt)
