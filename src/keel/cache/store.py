"""Cache entries in the KV port, their question vectors in a VectorIndex.

An entry (the answer, the question it answered, its usage) is one KV value under
``cache:e:<namespace>:<tenant tag>:<exact key>`` with the entry's TTL, so the exact layer is a
single KV get and expiry is the KV's job. The semantic layer keeps one vector per entry
(id = the exact key) with its partition, namespace, tenant tag and expiry as metadata, and
searches only within the request's partition.

Flushing bumps a generation counter that is part of every partition (so requests in flight
can never store or match entries of the old generation), then deletes the entries and
vectors of that namespace (and tenant).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from keel.cache.keys import CacheKey
from keel.ports.kv import KV
from keel.ports.vector_index import VectorIndex, Vectors

_ENTRY = "cache:e:"
_GEN = "cache:g:"


@dataclass(frozen=True, slots=True)
class Entry:
    key: str  # exact key
    query: str | None
    response: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    model: str
    created: float

    def dumps(self) -> str:
        return orjson.dumps({"q": self.query, "r": self.response, "pt": self.prompt_tokens,
                             "ct": self.completion_tokens, "m": self.model,
                             "c": self.created}).decode()

    @classmethod
    def loads(cls, key: str, raw: str) -> Entry:
        d = orjson.loads(raw)
        return cls(key, d.get("q"), d["r"], int(d.get("pt", 0)), int(d.get("ct", 0)),
                   str(d.get("m", "")), float(d.get("c", 0.0)))


@dataclass(frozen=True, slots=True)
class Candidate:
    entry: Entry
    similarity: float


def entry_key(key: CacheKey) -> str:
    return f"{_ENTRY}{key.namespace}:{key.tenant}:{key.exact}"


class CacheStore:
    def __init__(self, kv: KV, index: VectorIndex | None, dim: int) -> None:
        self.kv = kv
        self.index = index
        self.dim = dim
        self._created = False

    async def _ensure_index(self, dim: int = 0) -> VectorIndex | None:
        """The index, created on first use; an embedder that learns its dimension from its
        first answer (``dim`` 0) creates it with the first vector's."""
        if self.index is not None and not self._created:
            dim = self.dim or dim
            if not dim:
                return None
            await self.index.create(dim)
            self._created = True
        return self.index

    async def generation(self, namespace: str, tenant_tag: str) -> str:
        ns = await self.kv.get(f"{_GEN}{namespace}")
        tn = await self.kv.get(f"{_GEN}{namespace}:{tenant_tag}")
        return f"{ns or 0}.{tn or 0}"

    async def get_exact(self, key: CacheKey) -> Entry | None:
        raw = await self.kv.get(entry_key(key))
        return None if raw is None else Entry.loads(key.exact, raw)

    async def search(self, key: CacheKey, vector: Vectors, k: int = 3) -> list[Candidate]:
        index = await self._ensure_index(int(np.asarray(vector).shape[-1]))
        if index is None:
            return []
        hits = await index.search(vector, k, filters={"p": key.partition})
        now = time.time()
        out: list[Candidate] = []
        stale: list[str] = []
        for hit in hits:
            if float(hit.metadata.get("exp", 0.0)) < now:
                stale.append(hit.id)
                continue
            raw = await self.kv.get(f"{_ENTRY}{key.namespace}:{key.tenant}:{hit.id}")
            if raw is None:  # expired or flushed in the KV: the vector goes too
                stale.append(hit.id)
                continue
            out.append(Candidate(Entry.loads(hit.id, raw), hit.score))
        if stale:
            await index.delete(stale)
        return out

    async def put(self, key: CacheKey, entry: Entry, vector: Vectors | None,
                  ttl_s: float) -> None:
        await self.kv.set(entry_key(key), entry.dumps(), ttl_s=ttl_s)
        if vector is None or key.query is None:
            return
        index = await self._ensure_index(int(np.asarray(vector).shape[-1]))
        if index is None:
            return
        meta: dict[str, str | int | float] = {
            "p": key.partition, "ns": key.namespace, "t": key.tenant,
            "exp": time.time() + ttl_s,
        }
        await index.upsert([key.exact], np.asarray(vector, np.float32).reshape(1, -1), [meta])

    async def flush(self, namespace: str, tenant_tag: str | None = None) -> int:
        """Invalidate, then delete, a namespace's entries (one tenant's when given)."""
        gen = f"{_GEN}{namespace}" if tenant_tag is None else f"{_GEN}{namespace}:{tenant_tag}"
        await self.kv.incr(gen)
        prefix = f"{_ENTRY}{namespace}:" + ("" if tenant_tag is None else f"{tenant_tag}:")
        removed = 0
        for k in await self.kv.keys(prefix):
            removed += int(await self.kv.delete(k))
        index = await self._ensure_index()
        if index is not None:
            filters = {"ns": namespace} if tenant_tag is None else {"ns": namespace,
                                                                    "t": tenant_tag}
            await index.delete_where(filters)
        return removed

    async def count(self) -> int:
        return len(await self.kv.keys(_ENTRY))

    async def aclose(self) -> None:
        if self.index is not None:
            await self.index.aclose()
