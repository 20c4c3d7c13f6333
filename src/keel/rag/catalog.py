"""The catalog of RAG indexes (SQL): tenant, name, version, live generation and sizes.

Indexes belong to a tenant: ``(tenant, name)`` is the key, so tenant A's ``help`` and
tenant B's ``help`` are different indexes, a request only ever reads its own tenant's, and
an unknown-index error lists only the caller's own index names. ``vector`` is the vector
index behind a row (``rag-<tenant hash>-<name>``; rows from before tenants keep
``rag-<name>``).

``version`` goes up by one on every ingest (callers such as a cache can key on it).
``generation`` names the set of vectors searches read: an ``--replace`` ingest writes a
new generation next to the live one and flips this row in one transaction, so searches
never see a half-built index.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    select,
)

from keel.errors import InvalidRequest, RagIndexNotFound
from keel.storage.migrations import Migration

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

meta = MetaData()
rag_indexes = Table(
    "rag_indexes",
    meta,
    Column("tenant", String(128), nullable=False),
    Column("name", String(64), nullable=False),
    Column("vector", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("documents", Integer, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    PrimaryKeyConstraint("tenant", "name", name="rag_indexes_pk"),
)

# the shape before indexes had a tenant (kept for the migrations only)
_v1_meta = MetaData()
_v1 = Table(
    "rag_indexes",
    _v1_meta,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("documents", Integer, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

LEGACY_TENANT = "default"  # indexes ingested before tenants belong to the default tenant


def _tenant_scoped(c: Connection) -> None:
    """Rebuild rag_indexes keyed by (tenant, name); old rows go to the default tenant
    (the tenant of unauthenticated use) and keep their vectors."""
    old = [dict(r._mapping) for r in c.execute(select(_v1))]
    c.exec_driver_sql("ALTER TABLE rag_indexes RENAME TO rag_indexes_v1")
    meta.create_all(c, tables=[rag_indexes])
    for r in old:
        c.execute(rag_indexes.insert().values(tenant=LEGACY_TENANT, vector=f"rag-{r['name']}",
                                              **r))
    c.exec_driver_sql("DROP TABLE rag_indexes_v1")


MIGRATIONS = [
    Migration("rag/0001_indexes", lambda c: _v1_meta.create_all(c, tables=[_v1])),
    Migration("rag/0002_tenant_scoped", _tenant_scoped),
]


@dataclass(frozen=True, slots=True)
class IndexInfo:
    tenant: str
    name: str
    vector: str
    version: int
    generation: int
    documents: int
    chunks: int
    updated_at: float


def check_index_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"RAG index name {name!r} must be 1-40 letters, digits, '_' or '-'", param="index")
    return name


def vector_name(tenant: str, index: str) -> str:
    """The vector index behind a new RAG index: the tenant appears only hashed, so no
    tenant's name can collide with or prefix another's."""
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:12]
    return f"rag-{digest}-{check_index_name(index)}"


def get_index(c: Connection, tenant: str, name: str) -> IndexInfo | None:
    row = c.execute(select(rag_indexes).where(rag_indexes.c.tenant == tenant,
                                              rag_indexes.c.name == name)).mappings().first()
    return IndexInfo(**row) if row else None


def require_index(c: Connection, tenant: str, name: str) -> IndexInfo:
    info = get_index(c, tenant, name)
    if info is None:
        known = ", ".join(i.name for i in list_indexes(c, tenant)) or "none yet"
        raise RagIndexNotFound(
            f"RAG index {name!r} does not exist for your tenant (its indexes: {known}); "
            f"an operator creates it with `keel rag ingest DIR --index {name} "
            f"--tenant {tenant}`",
            param="index",
        )
    return info


def list_indexes(c: Connection, tenant: str | None = None) -> list[IndexInfo]:
    """Indexes of ``tenant`` (every tenant's when None: operators only)."""
    q = select(rag_indexes).order_by(rag_indexes.c.tenant, rag_indexes.c.name)
    if tenant is not None:
        q = q.where(rag_indexes.c.tenant == tenant)
    return [IndexInfo(**r) for r in c.execute(q).mappings().all()]


def vector_for(c: Connection, tenant: str, name: str) -> str:
    """The vector index an ingest into ``tenant``/``name`` writes to."""
    info = get_index(c, tenant, name)
    return info.vector if info is not None else vector_name(tenant, name)


def publish(c: Connection, tenant: str, name: str, generation: int, documents: int,
            chunks: int) -> IndexInfo:
    """Record a finished ingest: bump the version and point searches at ``generation``."""
    now = time.time()
    old = get_index(c, tenant, name)
    if old is None:
        vector = vector_name(tenant, name)
        c.execute(rag_indexes.insert().values(
            tenant=tenant, name=name, vector=vector, version=1, generation=generation,
            documents=documents, chunks=chunks, updated_at=now))
        return IndexInfo(tenant, name, vector, 1, generation, documents, chunks, now)
    c.execute(rag_indexes.update().where(rag_indexes.c.tenant == tenant,
                                         rag_indexes.c.name == name).values(
        version=old.version + 1, generation=generation, documents=documents, chunks=chunks,
        updated_at=now))
    return IndexInfo(tenant, name, old.vector, old.version + 1, generation, documents, chunks,
                     now)


def drop(c: Connection, tenant: str, name: str) -> bool:
    return bool(c.execute(rag_indexes.delete().where(
        rag_indexes.c.tenant == tenant, rag_indexes.c.name == name)).rowcount)
