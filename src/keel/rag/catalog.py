"""The catalog of RAG indexes (SQL): name, version, live generation and sizes.

``version`` goes up by one on every ingest (callers such as a cache can key on it).
``generation`` names the set of vectors searches read: an ``--replace`` ingest writes a
new generation next to the live one and flips this row in one transaction, so searches
never see a half-built index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Float, Integer, MetaData, String, Table, select

from keel.errors import RagIndexNotFound
from keel.storage.migrations import Migration

meta = MetaData()
rag_indexes = Table(
    "rag_indexes",
    meta,
    Column("name", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("generation", Integer, nullable=False),
    Column("documents", Integer, nullable=False),
    Column("chunks", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

MIGRATIONS = [Migration("rag/0001_indexes", lambda c: meta.create_all(c, tables=[rag_indexes]))]


@dataclass(frozen=True, slots=True)
class IndexInfo:
    name: str
    version: int
    generation: int
    documents: int
    chunks: int
    updated_at: float


def vector_name(index: str) -> str:
    """The vector-index name behind a RAG index."""
    return f"rag-{index}"


def get_index(c: Connection, name: str) -> IndexInfo | None:
    row = c.execute(select(rag_indexes).where(rag_indexes.c.name == name)).mappings().first()
    return IndexInfo(**row) if row else None


def require_index(c: Connection, name: str) -> IndexInfo:
    info = get_index(c, name)
    if info is None:
        known = ", ".join(i.name for i in list_indexes(c)) or "none yet"
        raise RagIndexNotFound(
            f"RAG index {name!r} does not exist (known: {known}); create it with "
            f"`keel rag ingest DIR --index {name}`",
            param="index",
        )
    return info


def list_indexes(c: Connection) -> list[IndexInfo]:
    rows = c.execute(select(rag_indexes).order_by(rag_indexes.c.name)).mappings().all()
    return [IndexInfo(**r) for r in rows]


def publish(c: Connection, name: str, generation: int, documents: int, chunks: int) -> IndexInfo:
    """Record a finished ingest: bump the version and point searches at ``generation``."""
    now = time.time()
    old = get_index(c, name)
    if old is None:
        c.execute(rag_indexes.insert().values(name=name, version=1, generation=generation,
                                              documents=documents, chunks=chunks,
                                              updated_at=now))
        return IndexInfo(name, 1, generation, documents, chunks, now)
    c.execute(rag_indexes.update().where(rag_indexes.c.name == name).values(
        version=old.version + 1, generation=generation, documents=documents, chunks=chunks,
        updated_at=now))
    return IndexInfo(name, old.version + 1, generation, documents, chunks, now)


def drop(c: Connection, name: str) -> bool:
    return bool(c.execute(rag_indexes.delete().where(rag_indexes.c.name == name)).rowcount)
