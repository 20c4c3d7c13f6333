"""``private_file`` on a file this process already has open must not drop its POSIX locks
(closing any descriptor of a file releases them all: how a second ``Database`` on a live
SQLite file let another process delete the WAL under the first one's connections)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from keel.storage.private_files import private_file, private_sqlite

PROBE = r"""
import fcntl, sys
with open(sys.argv[1], "r+") as fh:
    try:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("locked")
    else:
        print("free")
"""


def lock_state(path: Path) -> str:
    """What another process sees when it tries to lock ``path``."""
    return subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_private_file_keeps_this_process_locks(tmp_path: Path) -> None:
    path = private_file(tmp_path / "d" / "held.db")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with open(path, "r+") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_state(path) == "locked"
        private_file(path)  # e.g. a second Database on the same file in this process
        assert lock_state(path) == "locked"


def test_second_open_of_a_live_wal_database_keeps_its_shared_lock(tmp_path: Path) -> None:
    db = tmp_path / "keel.db"
    private_sqlite(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("create table t (x)")
    conn.execute("begin")
    conn.execute("select * from t").fetchall()  # a read transaction: SHARED on the file
    assert lock_state(db) == "locked"
    private_sqlite(db)
    assert lock_state(db) == "locked"
    conn.execute("commit")
    conn.close()


def test_existing_group_readable_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    private_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
