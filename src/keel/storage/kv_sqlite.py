"""KV on a SQLite file (WAL): the embedded default, shared by workers on one machine."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from keel.errors import StorageError
from keel.storage.private_files import private_dir
from keel.storage.sqlite_file import connect_wal

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS kv_expires ON kv(expires_at) WHERE expires_at IS NOT NULL;
"""


class SQLiteKV:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private_dir(Path(self.path).parent)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._ready = False
        # calls running in worker threads: a cancelled await leaves its thread running, so
        # closing must wait for them (closing a connection mid-query crashes SQLite)
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closed = False

    # -- connection handling ------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                with self._lock:  # the first connection creates the tables, once
                    conn = connect_wal(self.path, schema=None if self._ready else _SCHEMA,
                                       check_same_thread=False)
                    self._ready = True
            except sqlite3.Error as exc:
                raise StorageError(f"kv store {self.path} is not usable: {exc}") from None
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._idle:
                if self._closed:
                    raise StorageError(f"kv store {self.path} is closed")
                self._in_flight += 1
            try:
                return fn(self._conn())
            except sqlite3.Error as exc:
                raise StorageError(f"kv store {self.path} failed: {exc}") from None
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

        return await asyncio.to_thread(call)

    # -- KV port --------------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        def q(c: sqlite3.Connection) -> str | None:
            row = c.execute(
                "SELECT value FROM kv WHERE key=? AND (expires_at IS NULL OR expires_at>?)",
                (key, time.time()),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._run(q)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        exp = None if ttl_s is None else time.time() + ttl_s

        def q(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO kv(key,value,expires_at) VALUES(?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                "expires_at=excluded.expires_at",
                (key, value, exp),
            )

        await self._run(q)

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        now = time.time()
        exp = None if ttl_s is None else now + ttl_s

        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT INTO kv(key,value,expires_at) VALUES(?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
                "expires_at=excluded.expires_at "
                "WHERE kv.expires_at IS NOT NULL AND kv.expires_at<=?",
                (key, value, exp, now),
            )
            return cur.rowcount == 1

        return await self._run(q)

    async def delete(self, key: str) -> bool:
        now = time.time()

        def q(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "DELETE FROM kv WHERE key=? RETURNING expires_at", (key,)
            )
            row = cur.fetchone()
            return row is not None and (row[0] is None or row[0] > now)

        return await self._run(q)

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        now = time.time()
        exp = None if ttl_s is None else now + ttl_s

        def q(c: sqlite3.Connection) -> int:
            row = c.execute(
                "INSERT INTO kv(key,value,expires_at) VALUES(?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET "
                "value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at<=? "
                "  THEN excluded.value ELSE CAST(CAST(kv.value AS INTEGER)+? AS TEXT) END, "
                "expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at<=? "
                "  THEN excluded.expires_at ELSE kv.expires_at END "
                "RETURNING value",
                (key, str(amount), exp, now, amount, now),
            ).fetchone()
            return int(row[0])

        return await self._run(q)

    async def ttl(self, key: str) -> float | None:
        def q(c: sqlite3.Connection) -> float | None:
            row = c.execute("SELECT expires_at FROM kv WHERE key=?", (key,)).fetchone()
            if row is None or row[0] is None:
                return None
            left = float(row[0]) - time.time()
            return left if left > 0 else None

        return await self._run(q)

    async def keys(self, prefix: str) -> list[str]:
        def q(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT key FROM kv WHERE substr(key, 1, ?) = ? "
                "AND (expires_at IS NULL OR expires_at>?) ORDER BY key",
                (len(prefix), prefix, time.time()),
            ).fetchall()
            return [str(r[0]) for r in rows]

        return await self._run(q)

    async def purge_expired(self) -> int:
        def q(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at<=?", (time.time(),)
            ).rowcount

        return await self._run(q)

    async def aclose(self) -> None:
        def drain() -> None:
            with self._idle:
                self._closed = True
                self._idle.wait_for(lambda: self._in_flight == 0, timeout=30.0)

        await asyncio.to_thread(drain)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()
