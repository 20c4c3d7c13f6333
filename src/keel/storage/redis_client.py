"""Shared Redis/Valkey plumbing for the storage backends: the pooled client, URL
redaction and the translation of driver errors into :class:`~keel.errors.StorageError`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from keel.errors import StorageError


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_client(
    url: str,
    *,
    decode_responses: bool,
    max_connections: int,
    connect_timeout_s: float,
    pool_timeout_s: float,
    protocol: int | None = None,
) -> aioredis.Redis:
    """One pooled client. The pool blocks: callers beyond ``max_connections`` wait for a
    free connection instead of failing with "Too many connections"."""
    extra = {} if protocol is None else {"protocol": protocol}
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            decode_responses=decode_responses,
            max_connections=max_connections,
            timeout=pool_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            **extra,
        )
    except ValueError as exc:
        raise StorageError(f"invalid Redis URL {redact_url(url)}: {exc}") from None
    return aioredis.Redis.from_pool(pool)


@asynccontextmanager
async def redis_errors(safe_url: str, what: str) -> AsyncIterator[None]:
    """Turn driver errors raised inside the block into StorageErrors that say what to fix."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StorageError(
            f"cannot reach Redis at {safe_url} ({what}): {exc}. "
            "Check that the server is running and the URL is right."
        ) from exc
    except RedisError as exc:
        raise StorageError(f"Redis {what} failed at {safe_url}: {exc}") from exc
