"""Many threads opening one fresh SQLite file at once all get a WAL connection."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from keel.storage.sqlite_file import connect_wal

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v TEXT);"


def test_concurrent_first_opens_never_see_database_is_locked(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    for trial in range(15):
        path = tmp_path / f"race-{trial}.db"
        barrier = threading.Barrier(12)

        def open_and_write(i: int, path: Path = path, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait()
                conn = connect_wal(path, schema=SCHEMA, check_same_thread=False)
                conn.execute("INSERT INTO t VALUES (?, ?)", (str(i), "x"))
                conn.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with sqlite3.connect(path) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 12
    assert errors == []


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="syntax error"):
        connect_wal(tmp_path / "bad.db", schema="CREATE TABLE (")
