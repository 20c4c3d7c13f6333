"""A small key-value port: counters, TTL keys and flags shared by gateway replicas."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class KV(Protocol):
    """Strings in, strings out. ``ttl_s`` is seconds; ``None`` means no expiry."""

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None: ...

    async def set_if_absent(self, key: str, value: str, ttl_s: float | None = None) -> bool:
        """Set only when the key is missing (or expired). True when this call set it."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Atomically add ``amount``; ``ttl_s`` applies when the counter is created."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds left, ``None`` when the key has no expiry or does not exist."""
        ...

    async def keys(self, prefix: str) -> list[str]: ...

    async def aclose(self) -> None: ...
