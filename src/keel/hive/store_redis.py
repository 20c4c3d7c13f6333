"""The hive on Redis/Valkey Streams, for machines that share no file system.

Keys (under ``prefix``): ``hive:tasks:<tenant>`` (hash task -> created/ttl JSON),
``hive:s:<tenant>:<task>:<stream>`` (a Redis stream), ``hive:m:<tenant>:<task>`` (hash:
per stream, bytes and an end flag; ``@last`` the last write). Entry ids are ``0-N``
(``XADD ... 0-*``: Redis numbers them), so record ``seq`` is ``N - 1`` and a reader
resumes with ``XREAD BLOCK`` after ``0-seq``. An append is one Lua script, one round
trip (all records or none); shared files: :mod:`keel.hive.files_redis`. Keys carry the
task's TTL as a Redis expiry, refreshed on write, so an abandoned task disappears even
when ``keel hive gc`` never runs.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from keel.errors import StorageError
from keel.hive.files_redis import CHANGE_SCRIPT, UNLOCK_SCRIPT, RedisFilesMixin, file_info
from keel.hive.model import (
    HiveConflict,
    HiveStreamNotFound,
    HiveTaskNotFound,
    NewRecord,
    Record,
    StreamInfo,
    TaskInfo,
)
from keel.storage.redis_client import open_client, redact_url, redis_errors

# KEYS: stream, meta hash, tasks hash; ARGV: task, stream name, ts, then writer/kind/data
# triples. One round trip: refuses a missing task (-2) or an ended stream (-1); appends
# every record; counts bytes; refreshes the expiry from the task's TTL.
_APPEND = """
local raw = redis.call('HGET', KEYS[3], ARGV[1])
if not raw then return {-2} end
if redis.call('HGET', KEYS[2], ARGV[2] .. '@end') then return {-1} end
local ttl_ms = math.max(1, math.floor(tonumber(cjson.decode(raw)['ttl_s']) * 1000))
local ids = {}
local size = 0
local ended = false
for i = 4, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '0-*', 'ts', ARGV[3], 'w', ARGV[i],
                             'k', ARGV[i + 1], 'd', ARGV[i + 2])
  size = size + #ARGV[i + 2] + #ARGV[i] + 40
  if ARGV[i + 1] == 'end' then ended = true end
end
redis.call('HINCRBY', KEYS[2], ARGV[2], size)
redis.call('HINCRBY', KEYS[2], ARGV[2] .. '@n', #ids)
redis.call('HSET', KEYS[2], '@last', ARGV[3])
if ended then redis.call('HSET', KEYS[2], ARGV[2] .. '@end', '1') end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
return ids
"""


class RedisHiveStore(RedisFilesMixin):
    def __init__(self, url: str, *, prefix: str = "keel:", poll_s: float = 1.0,
                 max_connections: int = 256) -> None:
        self._safe = redact_url(url)
        self.prefix = prefix + "hive:"
        self.poll_s = poll_s
        # decode_responses: str everywhere (redis-py's stubs cannot know that)
        self._r: Any = open_client(url, decode_responses=True, max_connections=max_connections,
                              connect_timeout_s=5.0, pool_timeout_s=30.0)
        self._script = self._r.register_script(_APPEND)
        self._raw: Any = open_client(url, decode_responses=False, max_connections=64,
                                     connect_timeout_s=5.0, pool_timeout_s=30.0)
        self._change_script = self._r.register_script(CHANGE_SCRIPT)
        self._unlock_script = self._r.register_script(UNLOCK_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisHiveStore({self._safe!r})"

    def _tasks_key(self, tenant: str) -> str:
        return f"{self.prefix}tasks:{tenant}"

    def _meta_key(self, tenant: str, task: str) -> str:
        return f"{self.prefix}m:{tenant}\x00{task}"

    def _stream_key(self, tenant: str, task: str, stream: str) -> str:
        return f"{self.prefix}s:{tenant}\x00{task}\x00{stream}"

    async def create_task(self, tenant: str, task: str, ttl_s: float, now: float) -> TaskInfo:
        async with redis_errors(self._safe, "hive create"):
            await self._r.hsetnx(self._tasks_key(tenant), task,
                                 json.dumps({"created": now, "ttl_s": ttl_s}))
        info = await self.task(tenant, task)
        assert info is not None
        return info

    async def task(self, tenant: str, task: str) -> TaskInfo | None:
        async with redis_errors(self._safe, "hive task"):
            raw = await self._r.hget(self._tasks_key(tenant), task)
            if raw is None:
                return None
            meta = await self._r.hgetall(self._meta_key(tenant, task))
            files = await self._r.hgetall(self._fmeta_key(tenant, task))
        return self._info(tenant, task, raw, meta, files)

    @staticmethod
    def _info(tenant: str, task: str, raw: str, meta: dict[str, str],
              files: dict[str, str]) -> TaskInfo:
        m = json.loads(raw)
        info = TaskInfo(tenant, task, float(m["created"]), float(m["ttl_s"]),
                        float(meta.get("@last", m["created"])))
        for key in sorted(meta):
            if "@" not in key:
                info.streams.append(StreamInfo(key, int(meta.get(key + "@n", 0)),
                                               int(meta[key]), key + "@end" in meta,
                                               info.last_write))
        info.files = [file_info(n, m) for n, m in sorted(files.items())]
        return info

    async def tasks(self, tenant: str | None) -> list[TaskInfo]:
        out: list[TaskInfo] = []
        async with redis_errors(self._safe, "hive tasks"):
            if tenant is None:
                keys = [k async for k in self._r.scan_iter(match=f"{self.prefix}tasks:*",
                                                           count=500)]
                tenants = sorted(k[len(self.prefix) + 6:] for k in keys)
            else:
                tenants = [tenant]
            for t in tenants:
                for task, raw in sorted((await self._r.hgetall(self._tasks_key(t))).items()):
                    meta = await self._r.hgetall(self._meta_key(t, task))
                    files = await self._r.hgetall(self._fmeta_key(t, task))
                    out.append(self._info(t, task, raw, meta, files))
        return out

    async def delete_task(self, tenant: str, task: str) -> int:
        info = await self.task(tenant, task)
        if info is None:
            return 0
        async with redis_errors(self._safe, "hive delete"):
            keys = [self._stream_key(tenant, task, s.name) for s in info.streams]
            async with self._r.pipeline(transaction=True) as p:
                p.hdel(self._tasks_key(tenant), task)
                p.delete(self._meta_key(tenant, task), self._files_key(tenant, task),
                         self._fmeta_key(tenant, task), *keys)
                await p.execute()
        return info.bytes

    async def append(self, tenant: str, task: str, stream: str,
                     records: Sequence[NewRecord], now: float) -> list[int]:
        async with redis_errors(self._safe, "hive append"):
            args: list[Any] = [task, stream, repr(now)]
            for r in records:
                args += [r.writer, r.kind, r.data]
            ids = await self._script(keys=[self._stream_key(tenant, task, stream),
                                           self._meta_key(tenant, task),
                                           self._tasks_key(tenant)], args=args)
        if ids == [-2]:
            raise HiveTaskNotFound(f"no hive task {task!r}")
        if ids == [-1]:
            raise HiveConflict(f"hive stream {stream!r} has ended (an 'end' record was "
                               "written); write to a new stream")
        return [int(str(i).split("-")[1]) - 1 for i in ids]

    async def _check(self, tenant: str, task: str, stream: str) -> str:
        key = self._stream_key(tenant, task, stream)
        async with redis_errors(self._safe, "hive read"):
            if await self._r.exists(key):
                return key
            if await self._r.hexists(self._tasks_key(tenant), task):
                raise HiveStreamNotFound(f"no stream {stream!r} in hive task {task!r}")
        raise HiveTaskNotFound(f"no hive task {task!r}")

    async def read(self, tenant: str, task: str, stream: str, start: int,
                   limit: int) -> list[Record]:
        key = await self._check(tenant, task, stream)
        async with redis_errors(self._safe, "hive read"):
            rows = await self._r.xrange(key, min=f"0-{start + 1}", max="+", count=limit)
        return [_record(i, f) for i, f in rows]

    def tail(self, tenant: str, task: str, stream: str, start: int) -> AsyncIterator[Record]:
        return self._tail(tenant, task, stream, start)

    async def _tail(self, tenant: str, task: str, stream: str,
                    start: int) -> AsyncIterator[Record]:
        key = await self._check(tenant, task, stream)
        last = f"0-{start}"
        block = max(1, int(self.poll_s * 1000))
        while True:
            try:
                got = await self._r.xread({key: last}, count=1000, block=block)
            except Exception as exc:  # driver errors: a clear StorageError
                raise StorageError(f"hive tail at {self._safe} failed: {exc}") from exc
            if not got:
                if not await self._r.exists(key):
                    return  # deleted (gc) or expired
                continue
            for _key, rows in got:
                for i, f in rows:
                    rec = _record(i, f)
                    last = i
                    yield rec
                    if rec.kind == "end":
                        return

    async def usage(self, tenant: str) -> tuple[int, set[str]]:
        total, names = 0, set()
        for info in await self.tasks(tenant):
            total += info.bytes
            names |= {f"{info.name}/{s.name}" for s in info.streams}
        return total, names

    async def aclose(self) -> None:
        await self._r.aclose()
        await self._raw.aclose()


def _record(entry_id: str, f: dict[str, str]) -> Record:
    return Record(int(entry_id.split("-")[1]) - 1, float(f["ts"]), f["w"], f["k"], f["d"])
