"""API key store. Keys are shown once at creation and stored only as SHA-256 hashes.

Keys carry 256 bits of randomness, so a fast hash is enough (no password stretching);
resolution is cached in memory for a few seconds so the hot path costs no I/O.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Connection,
    Float,
    Index,
    MetaData,
    String,
    Table,
    select,
    update,
)

from keel.errors import AuthenticationError, NotFound
from keel.gateway.context import Principal
from keel.storage.migrations import Migration
from keel.storage.sql import Database

KEY_PREFIX = "keel_"

meta = MetaData()
api_keys = Table(
    "api_keys",
    meta,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("hint", String(16), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128)),
    Column("admin", Boolean, nullable=False, default=False),
    Column("name", String(200)),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Index("api_keys_tenant", "tenant"),
)

MIGRATIONS = [
    Migration("auth/0001_api_keys", lambda c: meta.create_all(c, tables=[api_keys])),
]


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    hint: str
    tenant: str
    agent: str | None
    admin: bool
    name: str | None
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class NewKey:
    info: KeyInfo
    secret: str  # shown once; never stored or logged


def tenant_problem(tenant: str) -> str | None:
    """Why ``tenant`` cannot name a tenant, or None. ``*`` means "every tenant" in
    allow-lists, metrics and the breaker's global counters: a tenant of that name was
    counted as the whole app and escaped its own breaker."""
    if not tenant.strip():
        return "tenant must not be empty"
    if tenant != tenant.strip():
        return f"tenant {tenant!r} must not start or end with spaces"
    if "*" in tenant:
        return f"tenant {tenant!r} must not contain '*' (it means every tenant in keel)"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in tenant):
        return "tenant must not contain control characters"
    if len(tenant) > 128:
        return f"tenant is {len(tenant)} characters; at most 128"
    return None


class KeyStore:
    def __init__(self, db: Database, *, cache_ttl_s: float = 5.0, cache_size: int = 10_000):
        self.db = db
        self.cache_ttl_s = cache_ttl_s
        self.cache_size = cache_size
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    # -- admin operations (sync: used by the CLI and wrapped by the HTTP admin API) ------

    def create(
        self, tenant: str, *, agent: str | None = None, admin: bool = False,
        name: str | None = None,
    ) -> NewKey:
        problem = tenant_problem(tenant)
        if problem is not None:
            raise ValueError(problem)
        key_id = secrets.token_hex(6)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        info = KeyInfo(key_id, secret[-4:], tenant, agent, admin, name, time.time(), None)
        self.db.transaction(
            lambda c: c.execute(
                api_keys.insert().values(
                    id=key_id, key_hash=hash_key(secret), hint=info.hint, tenant=tenant,
                    agent=agent, admin=admin, name=name, created_at=info.created_at,
                )
            )
        )
        return NewKey(info, secret)

    def list(self, *, tenant: str | None = None, include_revoked: bool = False) -> list[KeyInfo]:
        q = select(api_keys).order_by(api_keys.c.created_at)
        if tenant:
            q = q.where(api_keys.c.tenant == tenant)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))

        def run(c: Connection) -> list[KeyInfo]:
            return [_info(r._asdict()) for r in c.execute(q)]

        return self.db.transaction(run)

    def tenants(self) -> tuple[str, ...]:
        """Every tenant that has (or had) an API key."""
        q = select(api_keys.c.tenant).distinct().order_by(api_keys.c.tenant)
        return self.db.transaction(lambda c: tuple(r[0] for r in c.execute(q)))

    def revoke(self, key_id: str) -> None:
        def run(c: Connection) -> int:
            return c.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            ).rowcount

        if self.db.transaction(run) == 0:
            raise NotFound(f"no active API key with id {key_id!r} (see `keel keys list`)")
        self._cache.clear()

    def active(self, key_id: str) -> Principal | None:
        """The principal of key ``key_id`` as stored now, or None once it is revoked or
        gone. Uncached: sessions built on a key (the console) ask this on every page, so a
        revocation ends them at once, in every process."""

        return self._active_where(api_keys.c.id == key_id)

    # -- hot path -------------------------------------------------------------------------

    def _lookup(self, digest: str) -> Principal | None:
        return self._active_where(api_keys.c.key_hash == digest)

    def _active_where(self, match: ColumnElement[bool]) -> Principal | None:
        """The principal of the one unrevoked key that ``match`` selects."""

        def run(c: Connection) -> Principal | None:
            row = c.execute(
                select(api_keys.c.id, api_keys.c.tenant, api_keys.c.agent, api_keys.c.admin)
                .where(match, api_keys.c.revoked_at.is_(None))
            ).first()
            if row is None:
                return None
            return Principal(key_id=row.id, tenant=row.tenant, agent=row.agent,
                             admin=bool(row.admin))

        return self.db.transaction(run)

    async def resolve(self, secret: str) -> Principal:
        digest = hash_key(secret)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            principal = hit[0]
        else:

            principal = await asyncio.to_thread(self._lookup, digest)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.cache_ttl_s)
        if principal is None:
            raise AuthenticationError(
                "invalid or revoked API key: create one with `keel keys create --tenant NAME`"
            )
        return principal


def _info(r: dict[str, Any]) -> KeyInfo:
    return KeyInfo(r["id"], r["hint"], r["tenant"], r["agent"], bool(r["admin"]), r["name"],
                   r["created_at"], r["revoked_at"])
