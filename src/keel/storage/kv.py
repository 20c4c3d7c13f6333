"""Open a :class:`~keel.ports.KV` backend from its URL."""

from __future__ import annotations

from keel.errors import ConfigError
from keel.ports.kv import KV


def open_kv(url: str) -> KV:
    if url.startswith("sqlite:///"):
        from keel.storage.kv_sqlite import SQLiteKV

        return SQLiteKV(url.removeprefix("sqlite:///"))
    if url.startswith(("redis://", "rediss://", "valkey://", "unix://")):
        from keel.storage.kv_redis import RedisKV

        return RedisKV(url.replace("valkey://", "redis://", 1))
    if url == "memory://":
        from keel.storage.kv_memory import MemoryKV

        return MemoryKV()
    raise ConfigError(
        f"unsupported kv_url scheme in {url.split('@')[-1]!r}: use sqlite:///path/kv.db, "
        "redis://host:port/0 or memory://"
    )
