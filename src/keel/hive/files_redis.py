"""Shared files of the Redis/Valkey backend: one Lua script per write, a lock key per file.

Keys (under the store's prefix): ``f:<tenant>\\0<task>`` (hash: name -> bytes),
``fm:<tenant>\\0<task>`` (hash: name -> ``{"v", "n", "ts", "w"}``) and, while someone holds
a file for a read-modify-write, ``l:<tenant>\\0<task>\\0<name>`` = the holder's token with a
TTL, so a crashed holder blocks the others for at most ``ttl_s``. A write is one script:
it refuses a file locked by another token, compares the version, replaces bytes and
metadata and appends the ``file`` record to the task's ``files`` stream, atomically (a
reader's ``MULTI`` sees the old file or the new one, never a mix).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from keel.hive.files_dir import LOCK_POLL_S, mismatch
from keel.hive.model import (
    FILES_STREAM,
    FileInfo,
    FileLock,
    HiveFileLocked,
    HiveTaskNotFound,
    SharedFile,
)
from keel.storage.redis_client import redis_errors

# KEYS: bytes hash, meta hash, lock key, tasks hash, files stream, task meta hash.
# ARGV: task, name, expect (-1: any), bytes, writer, ts, token ('' = none), op, stream.
# Returns {version, size}; {-2} no task; {-3} locked by another; {-4} our lock expired;
# {-1, current} version mismatch.
CHANGE_SCRIPT = """
local raw = redis.call('HGET', KEYS[4], ARGV[1])
if not raw then return {-2} end
local holder = redis.call('GET', KEYS[3])
if ARGV[7] ~= '' then
  if holder ~= ARGV[7] then return {-4} end
elseif holder then
  return {-3}
end
local cur, size = 0, 0
local m = redis.call('HGET', KEYS[2], ARGV[2])
if m then
  local d = cjson.decode(m)
  cur, size = d['v'], d['n']
end
local expect = tonumber(ARGV[3])
if (expect >= 0 and expect ~= cur) or (ARGV[8] == 'delete' and cur == 0) then
  return {-1, cur}
end
local v, n = cur, size
if ARGV[8] == 'put' then
  v, n = cur + 1, #ARGV[4]
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  redis.call('HSET', KEYS[2], ARGV[2], '{"v":' .. v .. ',"n":' .. n .. ',"ts":' .. ARGV[6]
             .. ',"w":' .. cjson.encode(ARGV[5]) .. '}')
else
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
end
local rec = '{"op":"' .. ARGV[8] .. '","name":"' .. ARGV[2] .. '","version":' .. v
  .. ',"size":' .. n .. ',"ref":"hive://' .. ARGV[1] .. '/files/' .. ARGV[2] .. '@' .. v .. '"}'
redis.call('XADD', KEYS[5], '0-*', 'ts', ARGV[6], 'w', ARGV[5], 'k', 'file', 'd', rec)
redis.call('HINCRBY', KEYS[6], ARGV[9], #rec + #ARGV[5] + 40)
redis.call('HINCRBY', KEYS[6], ARGV[9] .. '@n', 1)
redis.call('HSET', KEYS[6], '@last', ARGV[6])
local ttl_ms = math.max(1, math.floor(tonumber(cjson.decode(raw)['ttl_s']) * 1000))
for i = 1, 6 do
  if i ~= 3 and i ~= 4 then redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
return {v, n}
"""

UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def file_info(name: str, meta: str | bytes) -> FileInfo:
    m = json.loads(meta)
    return FileInfo(name, int(m["v"]), int(m["n"]), float(m["ts"]), str(m["w"]))


class RedisFilesMixin:
    """The ``file_*`` methods and ``claim`` of :class:`keel.hive.store_redis.RedisHiveStore`."""

    prefix: str
    _safe: str
    _r: Any
    _raw: Any  # a client that returns bytes (file contents are not text)
    _change_script: Any
    _unlock_script: Any
    # provided by the host store
    _tasks_key: Callable[[str], str]
    _meta_key: Callable[[str, str], str]
    _stream_key: Callable[[str, str, str], str]

    def _files_key(self, tenant: str, task: str) -> str:
        return f"{self.prefix}f:{tenant}\x00{task}"

    def _fmeta_key(self, tenant: str, task: str) -> str:
        return f"{self.prefix}fm:{tenant}\x00{task}"

    def _lock_key(self, tenant: str, task: str, name: str) -> str:
        return f"{self.prefix}l:{tenant}\x00{task}\x00{name}"

    async def file_get(self, tenant: str, task: str, name: str) -> SharedFile | None:
        async with (redis_errors(self._safe, "hive file read"),
                    self._raw.pipeline(transaction=True) as p):
            p.hexists(self._tasks_key(tenant), task)
            p.hget(self._fmeta_key(tenant, task), name)
            p.hget(self._files_key(tenant, task), name)
            exists, meta, data = await p.execute()
        if not exists:
            raise HiveTaskNotFound(f"no hive task {task!r}")
        if meta is None:
            return None
        return SharedFile(file_info(name, meta), data or b"")

    async def files(self, tenant: str, task: str) -> list[FileInfo]:
        async with redis_errors(self._safe, "hive files"):
            if not await self._r.hexists(self._tasks_key(tenant), task):
                raise HiveTaskNotFound(f"no hive task {task!r}")
            metas = await self._r.hgetall(self._fmeta_key(tenant, task))
        return [file_info(n, m) for n, m in sorted(metas.items())]

    async def file_lock(self, tenant: str, task: str, name: str, ttl_s: float,
                        wait_s: float) -> FileLock:
        lock = FileLock(tenant, task, name, secrets.token_hex(16))
        key = self._lock_key(tenant, task, name)
        deadline = time.monotonic() + wait_s
        pause = LOCK_POLL_S[0]
        while True:
            async with redis_errors(self._safe, "hive file lock"):
                if not await self._r.hexists(self._tasks_key(tenant), task):
                    raise HiveTaskNotFound(f"no hive task {task!r}")
                if await self._r.set(key, lock.token, nx=True,
                                     px=max(1, int(ttl_s * 1000))):
                    return lock
            if time.monotonic() >= deadline:
                raise HiveFileLocked(f"hive file {name!r} is locked by another writer "
                                     f"(waited {wait_s:g} s); retry later")
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_S[1])

    async def file_unlock(self, lock: FileLock) -> None:
        async with redis_errors(self._safe, "hive file unlock"):
            await self._unlock_script(keys=[self._lock_key(lock.tenant, lock.task, lock.name)],
                                      args=[lock.token])

    async def file_put(self, tenant: str, task: str, name: str, data: bytes,
                       expect: int | None, writer: str, now: float,
                       lock: FileLock | None = None, wait_s: float = 10.0) -> FileInfo:
        v, n = await self._change(tenant, task, name, data, expect, writer, now, lock, wait_s,
                                  "put")
        return FileInfo(name, v, n, now, writer)

    async def file_delete(self, tenant: str, task: str, name: str, expect: int | None,
                          writer: str, now: float, lock: FileLock | None = None,
                          wait_s: float = 10.0) -> FileInfo:
        v, n = await self._change(tenant, task, name, b"", expect, writer, now, lock, wait_s,
                                  "delete")
        return FileInfo(name, v, n, now, writer)

    async def _change(self, tenant: str, task: str, name: str, data: bytes,
                      expect: int | None, writer: str, now: float, lock: FileLock | None,
                      wait_s: float, op: str) -> tuple[int, int]:
        if lock is not None and (lock.tenant, lock.task, lock.name) != (tenant, task, name):
            raise HiveFileLocked(f"the lock given is for another file, not {name!r}")
        keys = [self._files_key(tenant, task), self._fmeta_key(tenant, task),
                self._lock_key(tenant, task, name), self._tasks_key(tenant),
                self._stream_key(tenant, task, FILES_STREAM), self._meta_key(tenant, task)]
        args = [task, name, -1 if expect is None else expect, data, writer, repr(now),
                lock.token if lock else "", op, FILES_STREAM]
        deadline = time.monotonic() + wait_s
        pause = LOCK_POLL_S[0]
        while True:
            async with redis_errors(self._safe, "hive file write"):
                got = await self._change_script(keys=keys, args=args)
            code = int(got[0])
            if code >= 0:
                return code, int(got[1])
            if code == -2:
                raise HiveTaskNotFound(f"no hive task {task!r}")
            if code == -1:
                raise mismatch(name, expect, int(got[1]))
            if code == -4:
                raise HiveFileLocked(f"the lock on hive file {name!r} expired (its ttl_s "
                                     "passed) or was released; take it again")
            if time.monotonic() >= deadline:
                raise HiveFileLocked(f"hive file {name!r} is locked by another writer "
                                     f"(waited {wait_s:g} s); retry later")
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOCK_POLL_S[1])

    async def claim(self, job: str, every_s: float, now: float) -> bool:
        async with redis_errors(self._safe, "hive claim"):
            return bool(await self._r.set(f"{self.prefix}claim:{job}", repr(now), nx=True,
                                          px=max(1, int(every_s * 900))))
