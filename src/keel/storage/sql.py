"""Relational storage behind one interface: SQLite (default, WAL) or PostgreSQL.

SQLAlchemy 2 Core with a synchronous engine; async callers use :meth:`Database.run`,
which executes a function with a connection in a worker thread so the event loop never
blocks on I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from keel.errors import ConfigError, StorageError
from keel.storage.private_files import private_sqlite
from keel.storage.sqlite_file import prepare

T = TypeVar("T")


def engine_url(url: str) -> str:
    """Map keel's public URL schemes to SQLAlchemy driver URLs."""
    if url.startswith("sqlite:///") or url == "sqlite://":
        return url
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("postgresql+psycopg://"):
        return url
    raise ConfigError(
        f"unsupported database URL scheme in {redact(url)!r}: use sqlite:///path/to/keel.db "
        "or postgresql://user:pass@host:port/db"
    )


def redact(url: str) -> str:
    """The URL with any password replaced, safe for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    prepare(dbapi_conn)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Database:
    """A pooled engine plus the migrations every capability registered."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        sa_url = engine_url(url)
        self.dialect = "sqlite" if sa_url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            path = sa_url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                private_sqlite(path)  # 0600 in a 0700 dir, before SQLite creates it
            self.engine: Engine = create_engine(sa_url, pool_size=pool_size, max_overflow=10)
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(
                sa_url, pool_size=pool_size, max_overflow=10, pool_pre_ping=True
            )

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    def transaction(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in one transaction (committed on success, rolled back on error)."""
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except OperationalError as exc:
            raise StorageError(
                f"database {redact(self.url)} is not usable: {exc.orig or exc}"
            ) from None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(self.transaction, fn)

    def ping(self) -> None:
        from sqlalchemy import text

        self.transaction(lambda c: c.execute(text("select 1")).scalar())

    def dispose(self) -> None:
        self.engine.dispose()
