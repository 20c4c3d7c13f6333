"""One contract for every KV backend, run against the real stores.

``memory`` runs in-process, ``sqlite`` on a temp file, ``redis`` on the Valkey + RediSearch
server that the ``services`` plugin starts. A new backend joins by adding a param to
``BACKENDS`` and a branch in ``store``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keel.errors import StorageError
from keel.ports.kv import KV
from keel.storage.kv_memory import MemoryKV
from keel.storage.kv_redis import RedisKV
from keel.storage.kv_sqlite import SQLiteKV

SHORT_TTL = 0.3
PAST_SHORT_TTL = 0.55

BACKENDS = [
    pytest.param("memory"),
    pytest.param("sqlite"),
    pytest.param("redis", marks=pytest.mark.services),
]


@dataclass
class Store:
    """Opens clients onto one underlying store; ``persistent`` stores survive a reopen."""

    name: str
    factory: Callable[[], KV]
    persistent: bool = True
    opened: list[KV] = field(default_factory=list)

    def open(self) -> KV:
        kv = self.factory()
        self.opened.append(kv)
        return kv

    async def close_all(self) -> None:
        for kv in self.opened:
            await kv.aclose()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    name: str = request.param
    if name == "memory":
        shared = MemoryKV()
        return Store(name, lambda: shared, persistent=False)
    if name == "sqlite":
        path = tmp_path / "kv.db"
        return Store(name, lambda: SQLiteKV(path))
    if name == "redis":
        url: str = request.getfixturevalue("redis_clean_url")
        prefix = f"keel-test-{uuid.uuid4().hex[:8]}:"
        return Store(name, lambda: RedisKV(url, prefix=prefix))
    raise AssertionError(f"unknown backend {name}")


@pytest.fixture
async def kv(store: Store) -> AsyncIterator[KV]:
    yield store.open()
    await store.close_all()


def test_backend_satisfies_protocol(kv: KV) -> None:
    assert isinstance(kv, KV)


async def test_get_set_overwrite(kv: KV) -> None:
    assert await kv.get("missing") is None
    await kv.set("k", "v1")
    assert await kv.get("k") == "v1"
    await kv.set("k", "v2")
    assert await kv.get("k") == "v2"
    await kv.set("unicode", "héllo ✓ \n tabs\t")
    assert await kv.get("unicode") == "héllo ✓ \n tabs\t"
    await kv.set("empty", "")
    assert await kv.get("empty") == ""


async def test_ttl_expiry(kv: KV) -> None:
    await kv.set("short", "x", ttl_s=SHORT_TTL)
    await kv.set("forever", "y")
    assert await kv.get("short") == "x"
    left = await kv.ttl("short")
    assert left is not None
    assert 0 < left <= SHORT_TTL
    assert await kv.ttl("forever") is None
    assert await kv.ttl("missing") is None

    await asyncio.sleep(PAST_SHORT_TTL)
    assert await kv.get("short") is None
    assert await kv.ttl("short") is None
    assert await kv.get("forever") == "y"


async def test_set_without_ttl_clears_previous_expiry(kv: KV) -> None:
    await kv.set("k", "a", ttl_s=SHORT_TTL)
    await kv.set("k", "b")
    assert await kv.ttl("k") is None
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await kv.get("k") == "b"


async def test_non_positive_ttl_expires_at_once(kv: KV) -> None:
    await kv.set("k", "v", ttl_s=0)
    assert await kv.get("k") is None
    await kv.set("k", "v")
    await kv.set("k", "v2", ttl_s=-1)
    assert await kv.get("k") is None


async def test_set_if_absent(kv: KV) -> None:
    assert await kv.set_if_absent("lock", "first") is True
    assert await kv.set_if_absent("lock", "second") is False
    assert await kv.get("lock") == "first"

    assert await kv.set_if_absent("lease", "a", ttl_s=SHORT_TTL) is True
    assert await kv.set_if_absent("lease", "b", ttl_s=SHORT_TTL) is False
    left = await kv.ttl("lease")
    assert left is not None
    assert 0 < left <= SHORT_TTL
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await kv.set_if_absent("lease", "c") is True  # expired counts as absent
    assert await kv.get("lease") == "c"
    assert await kv.ttl("lease") is None


async def test_set_if_absent_has_one_winner_under_concurrency(kv: KV) -> None:
    results = await asyncio.gather(*(kv.set_if_absent("race", str(i)) for i in range(50)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await kv.get("race") == str(winner)


async def test_incr_counts(kv: KV) -> None:
    assert await kv.incr("n") == 1
    assert await kv.incr("n") == 2
    assert await kv.incr("n", 5) == 7
    assert await kv.incr("n", -10) == -3
    assert await kv.get("n") == "-3"
    assert await kv.ttl("n") is None


async def test_incr_is_atomic_under_200_concurrent_tasks(kv: KV) -> None:
    results = await asyncio.gather(*(kv.incr("hits") for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await kv.get("hits") == "200"


async def test_incr_is_atomic_across_two_clients(store: Store, kv: KV) -> None:
    other = store.open()
    await asyncio.gather(
        *(kv.incr("shared") for _ in range(100)),
        *(other.incr("shared", 2) for _ in range(100)),
    )
    assert await kv.get("shared") == "300"
    assert await other.get("shared") == "300"


async def test_incr_ttl_applies_only_on_creation(kv: KV) -> None:
    assert await kv.incr("window", ttl_s=SHORT_TTL) == 1
    first = await kv.ttl("window")
    assert first is not None
    assert 0 < first <= SHORT_TTL

    await asyncio.sleep(SHORT_TTL / 3)
    assert await kv.incr("window", ttl_s=60) == 2  # must not extend the window
    second = await kv.ttl("window")
    assert second is not None
    assert second < first

    await asyncio.sleep(PAST_SHORT_TTL)
    assert await kv.get("window") is None
    assert await kv.incr("window", ttl_s=60) == 1  # a fresh counter, a fresh window
    fresh = await kv.ttl("window")
    assert fresh is not None
    assert 50 < fresh <= 60


async def test_incr_without_ttl_keeps_existing_expiry(kv: KV) -> None:
    await kv.incr("c", ttl_s=60)
    await kv.incr("c")
    left = await kv.ttl("c")
    assert left is not None
    assert 50 < left <= 60


async def test_delete(kv: KV) -> None:
    await kv.set("k", "v")
    assert await kv.delete("k") is True
    assert await kv.get("k") is None
    assert await kv.delete("k") is False
    assert await kv.delete("never") is False
    await kv.incr("counter")
    assert await kv.delete("counter") is True
    assert await kv.incr("counter") == 1


async def test_keys_by_prefix(kv: KV) -> None:
    for key in ("a:1", "a:2", "a", "b:1", "ab:1"):
        await kv.set(key, "v")
    await kv.set("a:gone", "v", ttl_s=SHORT_TTL)
    assert sorted(await kv.keys("a:")) == ["a:1", "a:2", "a:gone"]
    await asyncio.sleep(PAST_SHORT_TTL)
    assert sorted(await kv.keys("a:")) == ["a:1", "a:2"]
    assert sorted(await kv.keys("a")) == ["a", "a:1", "a:2", "ab:1"]
    assert sorted(await kv.keys("")) == ["a", "a:1", "a:2", "ab:1", "b:1"]
    assert await kv.keys("zzz") == []


async def test_keys_prefix_is_literal(kv: KV) -> None:
    """Glob (Redis) and LIKE (SQL) wildcards in a prefix match only themselves."""
    for key in ("p*1", "p?2", "p[3]", "p%4", "p_5", "p\\6", "px7"):
        await kv.set(key, "v")
    assert await kv.keys("p*") == ["p*1"]
    assert await kv.keys("p?") == ["p?2"]
    assert await kv.keys("p[") == ["p[3]"]
    assert await kv.keys("p%") == ["p%4"]
    assert await kv.keys("p_") == ["p_5"]
    assert await kv.keys("p\\") == ["p\\6"]
    assert len(await kv.keys("p")) == 7


async def test_keys_scale_past_one_scan_page(kv: KV) -> None:
    await asyncio.gather(*(kv.set(f"many:{i:04d}", "v") for i in range(1200)))
    await kv.set("other", "v")
    found = await kv.keys("many:")
    assert len(found) == 1200
    assert set(found) == {f"many:{i:04d}" for i in range(1200)}


async def test_persists_across_reopen(store: Store, kv: KV) -> None:
    if not store.persistent:
        pytest.skip(f"{store.name} keeps data only in the process")
    await kv.set("k", "v")
    await kv.incr("n", 41)
    await kv.set("leased", "x", ttl_s=60)
    await kv.aclose()

    again = store.open()
    assert await again.get("k") == "v"
    assert await again.incr("n") == 42
    left = await again.ttl("leased")
    assert left is not None
    assert 50 < left <= 60
    assert sorted(await again.keys("")) == ["k", "leased", "n"]


# --- Redis only -------------------------------------------------------------------------


@pytest.mark.services
async def test_redis_prefixes_isolate_apps(redis_clean_url: str) -> None:
    one = RedisKV(redis_clean_url, prefix="app1:")
    two = RedisKV(redis_clean_url, prefix="app2:")
    try:
        await one.set("k", "from-one")
        await two.set("k", "from-two")
        await one.incr("n")
        assert await one.get("k") == "from-one"
        assert await two.get("k") == "from-two"
        assert await one.keys("") == ["k", "n"]
        assert await two.keys("") == ["k"]
        assert await two.delete("n") is False
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_unreachable_raises_storage_error_without_password() -> None:
    import socket

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kv = RedisKV(f"redis://user:s3cret-pw@127.0.0.1:{port}/0", connect_timeout_s=1)
    try:
        assert "s3cret-pw" not in repr(kv)
        with pytest.raises(StorageError) as info:
            await kv.get("k")
    finally:
        await kv.aclose()
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message
    assert "***" in message
