"""Keel's own data is private to the user that runs it: directories 0700, files 0600.

Prompts, request bodies, session tokens and workflow state live in these files, so they get
the same mode as ``admin.key``. Directories keel creates are 0700 (existing ones are left
as they are: the data dir may be a shared path the operator chose); files keel creates are
0600, and a file keel owns that an older version left group/world-readable is tightened
when keel opens it. SQLite gives its ``-wal``/``-shm`` files the mode of the main file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """``mkdir -p`` where every directory it creates is 0700."""
    path = Path(path)
    missing: list[Path] = []
    at = path
    while not at.exists() and at != at.parent:
        missing.append(at)
        at = at.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # mkdir's mode passes through the umask
    return path


def tighten(path: str | Path) -> None:
    """Drop group/other permissions from a file this user owns (no-op otherwise)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.getuid():
        with contextlib.suppress(PermissionError):
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def private_file(path: str | Path) -> Path:
    """Create ``path`` (and its directory) private, or tighten it when it exists.

    An existing file is never opened: closing any descriptor of a file drops every POSIX
    lock this process holds on it, so opening and closing a SQLite database that this
    process already uses would silently release its connections' locks, and another
    process could then checkpoint and delete the WAL under them (seen as "disk I/O
    error" / "database disk image is malformed")."""
    path = Path(path)
    private_dir(path.parent)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, FILE_MODE))
    tighten(path)
    return path


def private_sqlite(path: str | Path) -> None:
    """A SQLite file and its WAL/shared-memory companions, private (see the module doc)."""
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(f"{path}{suffix}")
