"""Schema migrations that work on SQLite and PostgreSQL.

Each capability contributes :class:`Migration` objects (ordered by id). A migration is a
function of a SQLAlchemy connection using dialect-neutral Core constructs. Applied ids are
recorded in ``keel_migrations``; running :func:`migrate` twice is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Float, MetaData, String, Table, select

from keel.storage.sql import Database

_meta = MetaData()
applied_table = Table(
    "keel_migrations",
    _meta,
    Column("id", String(128), primary_key=True),
    Column("applied_at", Float, nullable=False),
)


@dataclass(frozen=True)
class Migration:
    id: str  # "<capability>/<NNNN>_<name>", sorted within a capability
    apply: Callable[[Connection], None]


def migrate(db: Database, migrations: Iterable[Migration]) -> list[str]:
    """Apply pending migrations in order; return the ids applied now."""
    todo = list(migrations)
    ids = [m.id for m in todo]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate migration ids: {sorted(ids)}")

    def run(conn: Connection) -> list[str]:
        _meta.create_all(conn, tables=[applied_table], checkfirst=True)
        done = set(conn.execute(select(applied_table.c.id)).scalars())
        now: list[str] = []
        for m in todo:
            if m.id in done:
                continue
            m.apply(conn)
            conn.execute(applied_table.insert().values(id=m.id, applied_at=time.time()))
            now.append(m.id)
        return now

    if db.dialect == "postgresql":
        # Several gateway workers may start at once: serialise migrations.
        from sqlalchemy import text

        def locked(conn: Connection) -> list[str]:
            conn.execute(text("select pg_advisory_xact_lock(727272)"))
            return run(conn)

        return db.transaction(locked)
    return db.transaction(run)
