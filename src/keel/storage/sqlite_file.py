"""Opening a SQLite file in WAL mode safely when many threads or processes race to do it.

Switching a fresh file to WAL (and creating its tables) needs a write lock; SQLite answers
"database is locked" at once, without waiting on the busy timeout, when two connections
that both read the file each want it. Every connection therefore does its setup under a
retry loop, and skips the switch once the file is WAL (the mode is stored in the file).
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

from keel.storage.private_files import private_sqlite


def _is_lock_error(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def prepare(conn: sqlite3.Connection, *, timeout_s: float = 5.0, schema: str | None = None) -> None:
    """WAL, synchronous=NORMAL and `schema` on `conn`, retrying lock errors until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode not in ("wal", "memory"):
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            if schema:
                conn.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if not _is_lock_error(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.1)


def connect_wal(
    path: str | Path,
    *,
    timeout_s: float = 5.0,
    schema: str | None = None,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """An autocommit connection prepared by :func:`prepare`; closed again if that fails.
    A file path is created 0600 in a 0700 directory first (keel's data is private)."""
    if str(path) != ":memory:" and not str(path).startswith("file:"):
        private_sqlite(path)
    conn = sqlite3.connect(
        str(path), timeout=timeout_s, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        prepare(conn, timeout_s=timeout_s, schema=schema)
    except sqlite3.Error:
        conn.close()
        raise
    return conn
