"""Shared files of a task, the rules over the backends (:class:`HiveFiles`).

Any agent of the task's tenant reads and writes them; writes are serialized:

- compare-and-set: ``put(..., expect=V)`` succeeds only at version ``V`` (``expect=0``:
  create, the file must not exist), else 412 with the current version;
- a lock for a read-modify-write: ``async with files.locked(p, task, name) as lk`` holds
  the file exclusively (others' writes wait for it), then ``put(..., lock=lk)``;
  :meth:`update` does the whole read-modify-write;
- every change appends a ``file`` record to the task's ``files`` stream (tail it to see
  that file X changed to version V); ``hive://task/files/NAME@V`` refers to a version;
- sizes count toward the tenant's ``quota_bytes``; ``max_file_bytes`` per file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from keel.errors import InvalidRequest, PayloadTooLarge
from keel.gateway.context import Principal
from keel.hive.files_dir import file_record
from keel.hive.framing import record_bytes
from keel.hive.model import (
    FILES_STREAM,
    FileInfo,
    FileLock,
    HiveConflict,
    HiveFileNotFound,
    HiveQuotaExceeded,
    HiveVersionMismatch,
    NewRecord,
    SharedFile,
    check_name,
)

if TYPE_CHECKING:
    from keel.hive.service import HiveService


LOCK_TTL_S = 30.0  # a Redis lock whose holder died frees itself after this
WAIT_S = 10.0  # how long a write waits for another holder's lock


class HiveFiles:
    def __init__(self, hive: HiveService) -> None:
        self.hive = hive
        self.store = hive.store

    @staticmethod
    def writer(principal: Principal) -> str:
        return principal.agent or principal.key_id or "tenant"

    async def _task(self, tenant: str, task: str, name: str) -> None:
        check_name(name, "file")
        await self.hive.task(tenant, task)  # 404 with a hint when the task is missing

    async def get(self, tenant: str, task: str, name: str, version: int = 0) -> SharedFile:
        """The current file (``version``: must be that one, else 409)."""
        await self._task(tenant, task, name)
        f = await self.store.file_get(tenant, task, name)
        if f is None:
            raise HiveFileNotFound(f"no file {name!r} in hive task {task!r}")
        if version and f.info.version != version:
            raise HiveConflict(f"hive file {name!r} is now at version {f.info.version}; "
                               f"version {version} was replaced (only the current one is "
                               "kept)", current_version=f.info.version)
        return f

    async def list(self, tenant: str, task: str) -> list[FileInfo]:
        await self.hive.task(tenant, task)
        return await self.store.files(tenant, task)

    async def put(self, principal: Principal, task: str, name: str, data: bytes, *,
                  expect: int | None, lock: FileLock | None = None) -> FileInfo:
        """Write the whole file at version ``expect`` (0: create; ``None`` only with
        ``lock``, which already serializes the writers)."""
        await self._task(principal.tenant, task, name)
        limit = self.hive.settings.max_file_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"a hive file is at most {limit} bytes ([hive] "
                                  f"max_file_bytes); this one is {len(data)}")
        if expect is None and lock is None:
            raise InvalidRequest("a shared file write needs the version it replaces "
                                 "(expect=V, 0 to create) or the file's lock")
        if expect is not None and expect < 0:
            raise InvalidRequest("expect must be 0 (create) or a version >= 1", param="expect")
        rec = self._record_bytes("put", task, name, len(data), self.writer(principal))
        await self._quota(principal.tenant, task, name, len(data), rec)
        info = await self.store.file_put(principal.tenant, task, name, data, expect,
                                         self.writer(principal), time.time(), lock, WAIT_S)
        self.hive.count_bytes(principal.tenant, len(data))
        self.hive.count_write(principal.tenant, task, FILES_STREAM, rec)
        return info

    @staticmethod
    def _record_bytes(op: str, task: str, name: str, size: int, writer: str) -> int:
        """The bytes of the ``file`` record a change appends to the ``files`` stream (a
        version of up to 10 digits assumed: the version is known only after the write)."""
        data = file_record(op, task, FileInfo(name, 10**9, size, 0.0, writer))
        return record_bytes(NewRecord("file", data, writer))

    async def delete(self, principal: Principal, task: str, name: str, *,
                     expect: int | None, lock: FileLock | None = None) -> FileInfo:
        await self._task(principal.tenant, task, name)
        if expect is None and lock is None:
            raise InvalidRequest("deleting a shared file needs its version (expect=V) or "
                                 "its lock")
        try:
            info = await self.store.file_delete(principal.tenant, task, name, expect,
                                                self.writer(principal), time.time(), lock,
                                                WAIT_S)
        except HiveVersionMismatch as exc:
            if exc.extra.get("current_version") == 0:
                raise HiveFileNotFound(f"no file {name!r} in hive task {task!r}") from None
            raise
        self.hive.count_bytes(principal.tenant, -info.size)
        self.hive.count_write(principal.tenant, task, FILES_STREAM,
                              self._record_bytes("delete", task, name, info.size,
                                                 self.writer(principal)))
        return info

    async def _quota(self, tenant: str, task: str, name: str, size: int,
                     record: int) -> None:
        """The file's growth plus the ``file`` record appended to the ``files`` stream
        (itself a stream of the tenant, counted toward ``quota_streams``)."""
        await self.hive.check_quota(tenant, task, FILES_STREAM, record)
        usage = await self.hive.current_usage(tenant)
        old = next((f.size for f in await self.store.files(tenant, task) if f.name == name), 0)
        grow = size - old + record
        quota = self.hive.settings.quota_bytes
        if grow > 0 and usage.bytes + grow > quota:
            raise HiveQuotaExceeded(
                f"tenant {tenant!r} uses {usage.bytes} of {quota} hive bytes ([hive] "
                f"quota_bytes); this file needs {grow} more: delete files or tasks, or run "
                "`keel hive gc`")

    @contextlib.asynccontextmanager
    async def locked(self, principal: Principal, task: str, name: str, *,
                     ttl_s: float = LOCK_TTL_S, wait_s: float = WAIT_S
                     ) -> AsyncIterator[FileLock]:
        """Hold the file's exclusive lock (other writers wait) for a read-modify-write."""
        await self._task(principal.tenant, task, name)
        lock = await self.store.file_lock(principal.tenant, task, name, ttl_s, wait_s)
        try:
            yield lock
        finally:
            await self.store.file_unlock(lock)

    async def update(self, principal: Principal, task: str, name: str,
                     change: Callable[[bytes | None], Awaitable[bytes] | bytes]) -> FileInfo:
        """Read-modify-write under the lock: ``change(current bytes or None)`` -> new bytes."""
        async with self.locked(principal, task, name) as lock:
            cur = await self.store.file_get(principal.tenant, task, name)
            new = change(cur.data if cur else None)
            data = new if isinstance(new, bytes) else await new
            return await self.put(principal, task, name, data,
                                  expect=cur.info.version if cur else 0, lock=lock)
