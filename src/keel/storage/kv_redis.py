"""The KV port on Redis or Valkey, for gateway replicas that share counters and flags."""

from __future__ import annotations

import math
from contextlib import AbstractAsyncContextManager

from keel.errors import InvalidRequest
from keel.storage.redis_client import open_client, redact_url, redis_errors

# KEYS[1] counter; ARGV[1] amount; ARGV[2] ttl in ms, "" for none.
# The expiry is set only when this call created the key, all in one atomic script.
# PEXPIRE with 0 deletes the key: a counter created with ttl <= 0 expires at once.
_INCR_SCRIPT = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""

_GLOB_SPECIAL = frozenset("*?[]\\")


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in _GLOB_SPECIAL else ch for ch in text)


def _ttl_ms(ttl_s: float | None) -> int | None:
    """Seconds to whole milliseconds; ``None`` (or infinity) means no expiry.

    A ttl of zero or less gives 0: the key expires at once, as in the other backends.
    """
    if ttl_s is None or ttl_s == math.inf:
        return None
    if math.isnan(ttl_s):
        raise InvalidRequest("ttl_s must be a number of seconds, got NaN")
    if ttl_s <= 0:
        return 0
    return max(1, math.ceil(ttl_s * 1000))


class RedisKV:
    """``KV`` on one pooled ``redis.asyncio`` client; every key is stored under ``prefix``.

    The prefix lets several apps (or test runs) share one server; ``keys`` returns keys
    without it.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "keel:",
        max_connections: int = 64,
        connect_timeout_s: float = 5.0,
        pool_timeout_s: float = 10.0,
    ) -> None:
        self._safe_url = redact_url(url)
        self._prefix = prefix
        self._client = open_client(
            url, decode_responses=True, max_connections=max_connections,
            connect_timeout_s=connect_timeout_s, pool_timeout_s=pool_timeout_s,
        )
        self._incr = self._client.register_script(_INCR_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisKV({self._safe_url!r}, prefix={self._prefix!r})"

    def _errors(self, op: str) -> AbstractAsyncContextManager[None]:
        return redis_errors(self._safe_url, op)

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> str | None:
        async with self._errors("get"):
            value = await self._client.get(self._key(key))
        return None if value is None else str(value)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        ms = _ttl_ms(ttl_s)
        async with self._errors("set"):
            if ms == 0:  # already expired: the same as never readable again
                await self._client.delete(self._key(key))
            else:
                await self._client.set(self._key(key), value, px=ms)

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        ms = _ttl_ms(ttl_s)
        async with self._errors("set_if_absent"):
            if ms == 0:  # would expire at once: only report whether it was absent
                return not await self._client.exists(self._key(key))
            done = await self._client.set(self._key(key), value, px=ms, nx=True)
        return bool(done)

    async def delete(self, key: str) -> bool:
        async with self._errors("delete"):
            removed = await self._client.delete(self._key(key))
        return int(removed) > 0

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        ms = _ttl_ms(ttl_s)
        async with self._errors("incr"):
            value = await self._incr(
                keys=[self._key(key)], args=[int(amount), "" if ms is None else ms]
            )
        return int(value)

    async def ttl(self, key: str) -> float | None:
        async with self._errors("ttl"):
            ms = int(await self._client.pttl(self._key(key)))
        return None if ms < 0 else ms / 1000.0  # -1: no expiry, -2: no such key

    async def keys(self, prefix: str) -> list[str]:
        pattern = _glob_escape(self._prefix + prefix) + "*"
        cut = len(self._prefix)
        found: set[str] = set()  # SCAN may return a key more than once
        async with self._errors("keys"):
            async for key in self._client.scan_iter(match=pattern, count=500):
                found.add(str(key)[cut:])
        return sorted(found)

    async def aclose(self) -> None:
        await self._client.aclose()
