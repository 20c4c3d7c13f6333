"""Which DBOS executor id a gateway process runs under, so that exactly one live process
recovers each workflow.

DBOS recovers at launch the pending workflows of *its own* executor id. With several
gateway workers on one machine (``keel serve --workers N``) sharing the configured id,
every worker would recover every pending workflow at once. Instead, each process holds an
exclusive ``flock`` on ``<data_dir>/executors/<id>.lock`` for its lifetime:

* the first process to lock the configured id (``[approvals] executor_id``) runs as it and
  recovers that id's workflows at launch, as before (a restart resumes them);
* any other process runs under an id of its own (``<id>-<pid>-<random>``);
* the holder of the configured id also recovers the workflows of every id whose lock file
  is no longer locked (a worker that died), once, then removes that file.

A lock dies with its process (kill -9 included), so no stale lease survives a crash.
Replicas on other machines need their own ``executor_id`` (their own data_dir).
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import IO

from keel.storage.private_files import private_file


def _try_lock(path: Path) -> IO[str] | None:
    """An exclusive lock on ``path`` (None when another process holds it). The file must
    still be the one at ``path`` once locked: a leader may have removed it meanwhile."""
    private_file(path)  # 0600 in a 0700 directory, like every data file
    fh = open(path, "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(fh.fileno()).st_ino:
            raise OSError("lock file replaced")
    except OSError:
        fh.close()
        return None
    return fh


class ExecutorLease:
    def __init__(self, lock_dir: Path, base_id: str, *, lead: bool = True) -> None:
        self.dir = lock_dir
        self.base = base_id
        self.lead = lead  # False: never take the configured id (a `keel workflows worker`)
        self.id = base_id
        self._fh: IO[str] | None = None

    @property
    def leader(self) -> bool:
        return self.id == self.base

    def acquire(self) -> str:
        """Lock the configured id, else a fresh one of our own; returns the id to use."""
        if self._fh is not None:
            return self.id
        fh = _try_lock(self.dir / f"{self.base}.lock") if self.lead else None
        while fh is None:  # a fresh id; retried if a leader's scan raced us for the file
            self.id = f"{self.base}-{os.getpid()}-{secrets.token_hex(3)}"
            fh = _try_lock(self.dir / f"{self.id}.lock")
        self._fh = fh
        return self.id

    def dead(self) -> list[tuple[str, IO[str]]]:
        """Ids of our kind whose process is gone, each with its lock now held by us (the
        leader only); call :meth:`forget` once their workflows are recovered."""
        if not self.leader:
            return []
        out = []
        for path in sorted(self.dir.glob(f"{self.base}-*.lock")):
            fh = _try_lock(path)
            if fh is not None:
                out.append((path.stem, fh))
        return out

    def forget(self, executor_id: str, fh: IO[str]) -> None:
        (self.dir / f"{executor_id}.lock").unlink(missing_ok=True)
        fh.close()

    def release(self) -> None:
        if self._fh is not None:
            if not self.leader:
                (self.dir / f"{self.id}.lock").unlink(missing_ok=True)
            self._fh.close()
            self._fh = None
