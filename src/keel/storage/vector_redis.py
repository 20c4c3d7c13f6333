"""The VectorIndex port on Redis/Valkey with RediSearch: HNSW, cosine, tag pre-filters.

Each entry is a hash ``<prefix><name>:i:<id>`` with fields ``id``, ``meta`` (JSON),
``vec`` (float32 bytes) and ``_t`` (a TAG field). The dim lives in ``<prefix><name>:meta``.

Filters: metadata field names are not known when the index is created, so instead of
one TAG field per metadata field, every string ``field=value`` pair is stored as a
SHA-256 token (32 hex chars) in the single TAG field ``_t``. A filter becomes
``@_t:{<token>}`` clauses; because tokens are plain hex, no tenant or namespace name
(dashes, dots, spaces, colons, braces, non-ASCII...) ever needs TAG escaping, and
matching stays exact and case-sensitive. Searches are one KNN query with that
pre-filter, so the top-k is taken within the partition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import numpy as np
import orjson
from redis.commands.search.field import Field, TagField, VectorField
from redis.commands.search.index_definition import IndexDefinition, IndexType
from redis.exceptions import ResponseError

from keel.errors import InvalidRequest
from keel.ports.vector_index import Hit, Metadata, Vectors
from keel.storage.redis_client import open_client, redact_url, redis_errors
from keel.storage.vector_checks import (
    check_dim,
    check_filters,
    check_items,
    check_k,
    check_name,
    unit_query,
    unit_rows,
)

DELETE_PAGE = 1000
EF_RUNTIME = 64  # search breadth (at least 2k); 128 took ~1.2 ms at 100k (bench/cache_speed)


def tag_token(field: str, value: str) -> str:
    """The TAG token that stands for ``field == value`` (hex, so it needs no escaping)."""
    return hashlib.sha256(f"{field}\x00{value}".encode()).hexdigest()[:32]


def _tags(metadata: Metadata) -> str:
    return ",".join(tag_token(f, v) for f, v in metadata.items() if isinstance(v, str))


def _filter_clause(filters: dict[str, str]) -> str:
    if not filters:
        return "*"
    return "(" + " ".join(f"@_t:{{{tag_token(f, v)}}}" for f, v in filters.items()) + ")"


def _missing_index(exc: ResponseError) -> bool:
    text = str(exc).lower()
    return "no such index" in text or "unknown index" in text


class RedisVectorIndex:
    """``VectorIndex`` on one pooled ``redis.asyncio`` client (binary responses)."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        prefix: str = "keel:vec:",
        max_connections: int = 64,
        connect_timeout_s: float = 5.0,
        pool_timeout_s: float = 10.0,
        hnsw_m: int = 16,
        ef_construction: int = 200,
        ef_runtime: int = EF_RUNTIME,
    ) -> None:
        url = url.replace("valkey://", "redis://", 1)
        self._safe_url = redact_url(url)
        self._name = check_name(name)
        self._index = f"{prefix}{name}"
        self._meta_key = f"{prefix}{name}:meta"
        self._item_prefix = f"{prefix}{name}:i:"
        self._hnsw = (hnsw_m, ef_construction)
        self._ef_runtime = ef_runtime
        self._dim = 0
        self._client = open_client(
            url, decode_responses=False, max_connections=max_connections,
            connect_timeout_s=connect_timeout_s, pool_timeout_s=pool_timeout_s,
            protocol=2,  # flat FT.SEARCH replies, parsed below
        )

    def __repr__(self) -> str:
        return f"RedisVectorIndex({self._safe_url!r}, {self._name!r})"

    def _errors(self, op: str) -> AbstractAsyncContextManager[None]:
        return redis_errors(self._safe_url, f"{op} on vector index {self._name!r}")

    async def _known_dim(self) -> int:
        """The index's dim (0 when it was never created); cached once known."""
        if not self._dim:
            raw = await self._client.hget(self._meta_key, "dim")
            self._dim = int(raw) if raw is not None else 0
        return self._dim

    async def _ft_search(self, *args: Any) -> list[Any] | None:
        """Raw FT.SEARCH on this index; ``None`` when the index does not exist."""
        try:
            result: list[Any] = await self._client.execute_command(  # type: ignore[no-untyped-call]
                "FT.SEARCH", self._index, *args
            )
        except ResponseError as exc:
            if _missing_index(exc):
                return None
            raise
        return result

    # --- the port -----------------------------------------------------------------------

    async def create(self, dim: int, *, metric: Literal["cosine"] = "cosine") -> None:
        check_dim(dim)
        if metric != "cosine":
            raise InvalidRequest(f"unsupported metric {metric!r}: use 'cosine'", param="metric")
        async with self._errors("create"):
            await self._client.hsetnx(self._meta_key, "dim", dim)
            stored = int(await self._client.hget(self._meta_key, "dim") or 0)
            if stored != dim:
                raise InvalidRequest(
                    f"vector index {self._name!r} exists with dim {stored}, not {dim}",
                    param="dim",
                )
            self._dim = dim
            m, ef_construction = self._hnsw
            schema: list[Field] = [
                TagField("_t", separator=",", case_sensitive=True),
                VectorField(
                    "vec",
                    "HNSW",
                    {
                        "TYPE": "FLOAT32",
                        "DIM": dim,
                        "DISTANCE_METRIC": "COSINE",
                        "M": m,
                        "EF_CONSTRUCTION": ef_construction,
                        "EF_RUNTIME": EF_RUNTIME,
                    },
                ),
            ]
            definition = IndexDefinition(  # type: ignore[no-untyped-call]
                prefix=[self._item_prefix], index_type=IndexType.HASH
            )
            try:
                await self._client.ft(self._index).create_index(schema, definition=definition)
            except ResponseError as exc:
                if "already exists" not in str(exc).lower():
                    raise

    async def upsert(
        self, ids: Sequence[str], vectors: Vectors, metadata: Sequence[Metadata]
    ) -> None:
        ids = list(ids)
        check_items(ids, int(np.asarray(vectors).shape[0]) if np.ndim(vectors) else -1, metadata)
        async with self._errors("upsert"):
            dim = await self._known_dim()
            if not dim:
                raise InvalidRequest(
                    f"vector index {self._name!r} does not exist yet: call create(dim) first"
                )
            matrix = unit_rows(vectors, dim)
            if not ids:
                return
            async with self._client.pipeline(transaction=True) as pipe:
                for row, (item_id, meta) in enumerate(zip(ids, metadata, strict=True)):
                    pipe.hset(
                        self._item_prefix + item_id,
                        mapping={
                            "id": item_id,
                            "meta": orjson.dumps(dict(meta)),
                            "_t": _tags(meta),
                            "vec": matrix[row].tobytes(),
                        },
                    )
                await pipe.execute()

    async def search(
        self, vector: Vectors, k: int, *, filters: Mapping[str, str] | None = None
    ) -> list[Hit]:
        check_k(k)
        wanted = check_filters(filters)
        async with self._errors("search"):
            dim = await self._known_dim()
            if not dim:
                return []
            query = unit_query(vector, dim)
            ef = max(self._ef_runtime, 2 * k)
            result = await self._ft_search(
                f"{_filter_clause(wanted)}=>[KNN {k} @vec $v EF_RUNTIME {ef} AS dist]",
                "PARAMS", 2, "v", query.tobytes(),
                "RETURN", 3, "id", "meta", "dist",
                "SORTBY", "dist", "ASC",
                "LIMIT", 0, k,
                "DIALECT", 2,
            )  # fmt: skip
        if not result:
            return []
        hits: list[Hit] = []
        for fields in result[2::2]:
            row = dict(zip(fields[::2], fields[1::2], strict=True))
            hits.append(
                Hit(
                    row[b"id"].decode(),
                    1.0 - float(row[b"dist"]),
                    orjson.loads(row[b"meta"]),
                )
            )
        return hits

    async def delete(self, ids: Sequence[str]) -> int:
        keys = [self._item_prefix + i for i in dict.fromkeys(ids)]
        if not keys:
            return 0
        async with self._errors("delete"):
            return int(await self._client.delete(*keys))

    async def delete_where(self, filters: Mapping[str, str]) -> int:
        wanted = check_filters(filters)
        if not wanted:
            raise InvalidRequest("delete_where needs at least one filter", param="filters")
        removed = 0
        async with self._errors("delete_where"):
            while True:
                page = await self._ft_search(
                    _filter_clause(wanted), "NOCONTENT", "LIMIT", 0, DELETE_PAGE, "DIALECT", 2
                )
                if not page or len(page) < 2:
                    return removed
                removed += int(await self._client.delete(*page[1:]))

    async def count(self, filters: Mapping[str, str] | None = None) -> int:
        wanted = check_filters(filters)
        async with self._errors("count"):
            result = await self._ft_search(
                _filter_clause(wanted), "LIMIT", 0, 0, "DIALECT", 2
            )
        return int(result[0]) if result else 0

    async def aclose(self) -> None:
        await self._client.aclose()
