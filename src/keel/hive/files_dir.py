"""Shared files of the directory backend: compare-and-set on a version, under ``flock``.

Layout: ``<task>/files/<name>`` holds one header line (``{"v", "w", "ts", "n"}``: version,
writer, time, size) and the bytes. A write takes an exclusive ``flock`` on
``files/.lock-<name>`` (held by whoever does a read-modify-write with :meth:`file_lock`,
else taken for the write alone), checks the version, writes ``.tmp-<name>.<pid>.<n>``,
fsyncs it (``[hive] fsync`` ``end`` or ``always``; ``always`` also fsyncs the directory
after the rename), renames it over the file and appends a ``file`` record to the task's
``files`` stream, all under the lock. A reader opens the file once and reads header and
bytes from that one inode, so it sees the old version or the new one, never a mix; a
writer killed mid-write leaves only a temp file, removed by the next writer of that name
(or with the task). The lock goes with the holder's process, so a crashed holder never
blocks the others; a live holder blocks writers for at most their ``wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from keel.errors import StorageError
from keel.hive.model import (
    FILES_STREAM,
    FileInfo,
    FileLock,
    HiveFileLocked,
    HiveTaskNotFound,
    HiveVersionMismatch,
    NewRecord,
    SharedFile,
)

LOCK_POLL_S = (0.0005, 0.02)  # first and longest sleep between tries for a held lock


def file_record(op: str, task: str, info: FileInfo) -> str:
    """The data of the ``file`` record a change appends (the same on every backend)."""
    return orjson.dumps({"op": op, "name": info.name, "version": info.version,
                         "size": info.size,
                         "ref": f"hive://{task}/files/{info.name}@{info.version}"}).decode()


def mismatch(name: str, expect: int | None, current: int) -> HiveVersionMismatch:
    if expect == 0:
        return HiveVersionMismatch(
            f"hive file {name!r} already exists (version {current}); update it with "
            f'If-Match: "{current}"', current_version=current)
    if current == 0:
        return HiveVersionMismatch(f"hive file {name!r} does not exist; create it with "
                                   "If-None-Match: *", current_version=0)
    return HiveVersionMismatch(
        f"hive file {name!r} is at version {current}, not {expect}: read it again and "
        f'retry with If-Match: "{current}"', current_version=current)


def _read(path: Path) -> SharedFile | None:
    try:
        with open(path, "rb") as fh:  # one open: header and bytes of the same inode
            raw = fh.read()
    except FileNotFoundError:
        return None
    head, _, data = raw.partition(b"\n")
    try:
        h = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise StorageError(f"hive file {path.name!r}: unreadable header") from None
    if len(data) != h["n"]:
        raise StorageError(f"hive file {path.name!r}: {len(data)} bytes, header says {h['n']}")
    return SharedFile(FileInfo(path.name, int(h["v"]), int(h["n"]), float(h["ts"]),
                               str(h["w"])), data)


def _stat(path: Path) -> FileInfo | None:
    try:
        with open(path, "rb") as fh:
            h = orjson.loads(fh.readline())
    except FileNotFoundError:
        return None
    return FileInfo(path.name, int(h["v"]), int(h["n"]), float(h["ts"]), str(h["w"]))


class DirFilesMixin:
    """The ``file_*`` methods of :class:`keel.hive.store_dir.DirHiveStore`."""

    fsync: str
    _held: dict[str, int]
    _tmp_seq: itertools.count[int]
    # provided by the host store
    _task_dir: Callable[[str, str], Path]
    append_sync: Callable[[Path, str, list[NewRecord], float], list[int]]

    def _files_dir(self, tenant: str, task: str) -> Path:
        d = self._task_dir(tenant, task)
        if not (d / "task.json").exists():
            raise HiveTaskNotFound(f"no hive task {task!r}")
        return d / "files"

    async def file_get(self, tenant: str, task: str, name: str) -> SharedFile | None:
        path = self._files_dir(tenant, task) / name
        return await asyncio.to_thread(_read, path)

    async def files(self, tenant: str, task: str) -> list[FileInfo]:
        return await asyncio.to_thread(self.files_sync, self._files_dir(tenant, task))

    @staticmethod
    def files_sync(folder: Path) -> list[FileInfo]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(folder.iterdir()):
                if not path.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError, ValueError):
                        info = _stat(path)
                        if info is not None:
                            out.append(info)
        return out

    # -- the lock -------------------------------------------------------------------------

    async def _acquire(self, folder: Path, name: str, wait_s: float) -> int:
        try:
            folder.mkdir(exist_ok=True, mode=0o700)
            fd = os.open(folder / f".lock-{name}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            raise HiveTaskNotFound(f"no hive task {folder.parent.name!r}") from None
        deadline = time.monotonic() + wait_s
        pause = LOCK_POLL_S[0]
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise HiveFileLocked(
                        f"hive file {name!r} is locked by another writer (waited "
                        f"{wait_s:g} s); retry later") from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, LOCK_POLL_S[1])

    async def file_lock(self, tenant: str, task: str, name: str, ttl_s: float,
                        wait_s: float) -> FileLock:
        fd = await self._acquire(self._files_dir(tenant, task), name, wait_s)
        lock = FileLock(tenant, task, name, secrets.token_hex(16))
        self._held[lock.token] = fd
        return lock

    async def file_unlock(self, lock: FileLock) -> None:
        fd = self._held.pop(lock.token, None)
        if fd is not None:
            os.close(fd)  # releases the flock

    def _ours(self, lock: FileLock | None, tenant: str, task: str, name: str) -> bool:
        if lock is None:
            return False
        if (lock.tenant, lock.task, lock.name) != (tenant, task, name) or (
                lock.token not in self._held):
            raise HiveFileLocked(f"the lock given is not held on hive file {name!r} (it "
                                 "was released, or is for another file)")
        return True

    # -- writes ---------------------------------------------------------------------------

    async def file_put(self, tenant: str, task: str, name: str, data: bytes,
                       expect: int | None, writer: str, now: float,
                       lock: FileLock | None = None, wait_s: float = 10.0) -> FileInfo:
        return await self._change(tenant, task, name, data, expect, writer, now, lock, wait_s)

    async def file_delete(self, tenant: str, task: str, name: str, expect: int | None,
                          writer: str, now: float, lock: FileLock | None = None,
                          wait_s: float = 10.0) -> FileInfo:
        return await self._change(tenant, task, name, None, expect, writer, now, lock, wait_s)

    async def _change(self, tenant: str, task: str, name: str, data: bytes | None,
                      expect: int | None, writer: str, now: float, lock: FileLock | None,
                      wait_s: float) -> FileInfo:
        folder = self._files_dir(tenant, task)
        ours = self._ours(lock, tenant, task, name)
        fd = -1 if ours else await self._acquire(folder, name, wait_s)
        try:
            return await asyncio.to_thread(self._change_locked, folder, task, name, data,
                                           expect, writer, now)
        finally:
            if fd >= 0:
                os.close(fd)

    def _change_locked(self, folder: Path, task: str, name: str, data: bytes | None,
                       expect: int | None, writer: str, now: float) -> FileInfo:
        """Under the file's lock: check the version, replace (or delete) the file, log it."""
        path = folder / name
        for stale in folder.glob(f".tmp-{name}.*"):  # left by a writer that died mid-write
            stale.unlink(missing_ok=True)
        cur = _stat(path)
        version = cur.version if cur else 0
        if expect is not None and expect != version:
            raise mismatch(name, expect, version)
        if data is None:
            if cur is None:
                raise mismatch(name, expect, 0)
            path.unlink()
            info, op = cur, "delete"
        else:
            info, op = FileInfo(name, version + 1, len(data), now, writer), "put"
            self._replace(folder, path, info, data)
        self.append_sync(folder.parent, FILES_STREAM,
                         [NewRecord("file", file_record(op, task, info), writer)], now)
        return info

    def _replace(self, folder: Path, path: Path, info: FileInfo, data: bytes) -> None:
        head = orjson.dumps({"v": info.version, "w": info.writer, "ts": info.ts,
                             "n": info.size}) + b"\n"
        tmp = folder / f".tmp-{info.name}.{os.getpid()}.{next(self._tmp_seq)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(head + data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if self.fsync != "never":
                os.fsync(fd)  # the bytes are on disk before the name points at them
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise StorageError(f"hive file {info.name!r}: write failed ({exc})") from None
        os.close(fd)
        os.rename(tmp, path)
        if self.fsync == "always":
            dfd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
