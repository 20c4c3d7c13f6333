"""The vector-search port: nearest neighbours by cosine similarity, partitioned by metadata.

The semantic cache and RAG store one vector per entry with a little metadata. String
metadata fields double as partitions (tenant, namespace, model): a search with
``filters`` only ever returns entries whose fields equal every given value, and returns
the true top-k *within* that partition, however small it is next to the whole index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

MetadataValue: TypeAlias = str | int | float
Metadata: TypeAlias = dict[str, MetadataValue]
Vectors: TypeAlias = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. ``score`` is cosine similarity: 1.0 is identical, higher is closer."""

    id: str
    score: float
    metadata: Metadata = field(default_factory=dict)


@runtime_checkable
class VectorIndex(Protocol):
    """A named, persistent vector index. Every method is safe to call from the event loop.

    Only ``str`` metadata values can be filtered on; ``int``/``float`` values are stored and
    returned as they are. Filters are exact, case-sensitive matches ANDed together; an
    empty mapping is the same as ``None``.
    """

    async def create(self, dim: int, *, metric: Literal["cosine"] = "cosine") -> None:
        """Create the index; a no-op if it exists with this ``dim``, InvalidRequest if not."""
        ...

    async def upsert(
        self, ids: Sequence[str], vectors: Vectors, metadata: Sequence[Metadata]
    ) -> None:
        """Insert or replace entries: ``vectors`` is ``(len(ids), dim)`` float32, non-zero rows."""
        ...

    async def search(
        self, vector: Vectors, k: int, *, filters: Mapping[str, str] | None = None
    ) -> list[Hit]:
        """Up to ``k`` nearest entries to ``vector`` (shape ``(dim,)``), best first."""
        ...

    async def delete(self, ids: Sequence[str]) -> int:
        """Remove entries by id; returns how many existed."""
        ...

    async def delete_where(self, filters: Mapping[str, str]) -> int:
        """Remove every entry matching ``filters`` (must be non-empty); returns how many."""
        ...

    async def count(self, filters: Mapping[str, str] | None = None) -> int: ...

    async def aclose(self) -> None: ...
