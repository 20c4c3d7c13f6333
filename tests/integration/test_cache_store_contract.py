"""One contract for the cache store on both backends: embedded (SQLite KV + usearch) and
Redis/Valkey (KV + RediSearch HNSW) started by the test harness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from keel.cache.keys import cache_key, tenant_tag
from keel.cache.store import CacheStore, Entry
from keel.storage.kv import open_kv
from keel.storage.vectors import open_vector_index

DIM = 16
BACKENDS = [pytest.param("embedded"), pytest.param("redis", marks=pytest.mark.services)]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CacheStore]:
    if request.param == "embedded":
        kv = open_kv(f"sqlite:///{tmp_path / 'kv.db'}")
        index = open_vector_index("embedded://", "cache", tmp_path)
    else:
        url: str = request.getfixturevalue("redis_clean_url")
        kv = open_kv(url)
        index = open_vector_index(url, "cache", tmp_path)
    s = CacheStore(kv, index, DIM)
    yield s
    await s.aclose()
    await kv.aclose()


def vec(seed: int, jitter: float = 0.0, base: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed if base is None else base)
    v = rng.standard_normal(DIM).astype(np.float32)
    if jitter:
        v += jitter * np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def key(text: str, tenant: str = "acme", ns: str = "default", gen: str = "0.0", **body: object):
    b = {"messages": [{"role": "user", "content": text}], **body}
    return cache_key(route="chat", body=b, model="m", tenant=tenant, namespace=ns,
                     generation=gen)


def entry(k, text: str, answer: str) -> Entry:
    return Entry(k.exact, text, {"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": answer},
         "finish_reason": "stop"}]}, 3, 4, "m", 0.0)


async def test_exact_and_semantic_within_partition(store: CacheStore) -> None:
    k = key("reset password")
    await store.put(k, entry(k, "reset password", "A"), vec(1), ttl_s=60)
    got = await store.get_exact(k)
    assert got is not None and got.response["choices"][0]["message"]["content"] == "A"
    near = key("reset my password")
    assert near.partition == k.partition and near.exact != k.exact
    hits = await store.search(near, vec(2, 0.05, base=1))
    assert hits and hits[0].entry.query == "reset password" and hits[0].similarity > 0.95


async def test_tenants_and_params_are_separate_partitions(store: CacheStore) -> None:
    k = key("q", tenant="a")
    await store.put(k, entry(k, "q", "tenant a's answer"), vec(1), ttl_s=60)
    for other in (key("q", tenant="b"), key("q", tenant="a", temperature=1.0),
                  key("q", tenant="a", ns="docs")):
        assert await store.get_exact(other) is None
        assert await store.search(other, vec(1)) == []
    assert await store.get_exact(key("q", tenant="a")) is not None


async def test_ttl_expiry(store: CacheStore) -> None:
    k = key("short lived")
    await store.put(k, entry(k, "short lived", "A"), vec(3), ttl_s=0.3)
    assert await store.get_exact(k) is not None
    await asyncio.sleep(1.1)
    assert await store.get_exact(k) is None
    assert await store.search(k, vec(3)) == []


async def test_flush_namespace_and_tenant(store: CacheStore) -> None:
    keys = [key("q", tenant=t, ns=ns) for t in ("a", "b") for ns in ("default", "docs")]
    for i, k in enumerate(keys):
        await store.put(k, entry(k, "q", str(i)), vec(10 + i), ttl_s=60)
    assert await store.flush("docs", tenant_tag("a")) == 1
    assert await store.get_exact(keys[1]) is None  # a/docs
    assert await store.get_exact(keys[3]) is not None  # b/docs
    assert await store.flush("default") == 2
    assert await store.get_exact(keys[0]) is None and await store.get_exact(keys[2]) is None
    assert await store.search(keys[0], vec(10)) == []
    # the generation moved on: a request planned now lands in a new partition
    assert await store.generation("default", tenant_tag("a")) != "0.0"
