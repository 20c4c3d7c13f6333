"""Search a RAG index: the catalog says which generation is live, the vectors answer.

Catalog rows are cached for ``catalog_refresh_s`` (1 s), so a search costs one query
embedding and one vector search, not a SQL round trip. When the version changes (an
ingest from the CLI or another replica) the vector handle is reopened, which is what
makes a usearch index written by another process visible here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from keel.errors import RagIndexEmpty
from keel.gateway.embedding_memo import EmbeddingMemo
from keel.ports.embedder import Embedder
from keel.ports.vector_index import VectorIndex, Vectors
from keel.rag import catalog
from keel.rag.catalog import IndexInfo
from keel.rag.settings import RagSettings
from keel.storage.sql import Database
from keel.storage.vectors import open_vector_index


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    doc: str
    title: str
    text: str
    score: float


class Retriever:
    def __init__(self, db: Database, settings: RagSettings, data_dir: Path,
                 embedder: Embedder) -> None:
        self.db = db
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.embedder = embedder
        self._infos: dict[tuple[str, str], tuple[float, IndexInfo | None]] = {}
        self._handles: dict[str, tuple[int, VectorIndex]] = {}
        self._retired: list[VectorIndex] = []

    def open_vectors(self, vector: str) -> VectorIndex:
        """The vector index named ``vector`` (:func:`catalog.vector_for` says which)."""
        return open_vector_index(self.settings.vector_url, vector, self.data_dir)

    async def info(self, tenant: str, name: str) -> IndexInfo:
        """Index ``name`` of ``tenant``; never another tenant's (RagIndexNotFound)."""
        now = time.monotonic()
        key = (tenant, name)
        cached = self._infos.get(key)
        if cached is None or now - cached[0] > self.settings.catalog_refresh_s:
            found = await self.db.run(lambda c: catalog.get_index(c, tenant, name))
            cached = (now, found)
            self._infos[key] = cached
        if cached[1] is None:
            self._infos.pop(key, None)  # ask SQL again next time: it may be ingested soon
            await self.db.run(lambda c: catalog.require_index(c, tenant, name))  # raises
            return await self.info(tenant, name)
        info = cached[1]
        if info.chunks == 0:
            raise RagIndexEmpty(f"RAG index {name!r} is empty; add documents with "
                                f"`keel rag ingest DIR --index {name} --tenant {tenant}`",
                                param="index")
        return info

    async def _vectors(self, info: IndexInfo) -> VectorIndex:
        held = self._handles.get(info.vector)
        if held is not None and held[0] == info.version:
            return held[1]
        for old in self._retired:  # closed one swap later, so in-flight searches finish
            await old.aclose()
        self._retired = [held[1]] if held is not None else []
        handle = self.open_vectors(info.vector)
        self._handles[info.vector] = (info.version, handle)
        return handle

    async def search(self, tenant: str, name: str, query: str, top_k: int,
                     memo: EmbeddingMemo | None = None) -> tuple[IndexInfo, list[Passage]]:
        """The ``top_k`` passages nearest ``query``; its embedding through the request's
        ``memo`` when given (shared with the cache and the firewall)."""
        info = await self.info(tenant, name)
        memo = memo if memo is not None else EmbeddingMemo()
        vector = (await memo.embed(self.embedder, [query]))[0]
        return info, await self.search_vector(info, vector, top_k)

    async def search_vector(self, info: IndexInfo, vector: Vectors, top_k: int
                            ) -> list[Passage]:
        vectors = await self._vectors(info)
        hits = await vectors.search(vector, top_k, filters={"gen": str(info.generation)})
        return [Passage(h.id, str(h.metadata.get("doc", "")), str(h.metadata.get("title", "")),
                        str(h.metadata.get("text", "")), h.score) for h in hits]

    async def aclose(self) -> None:
        for old in self._retired:
            await old.aclose()
        for _, handle in self._handles.values():
            await handle.aclose()
        self._retired, self._handles = [], {}
