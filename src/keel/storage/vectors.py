"""Open a :class:`~keel.ports.VectorIndex` backend from its URL."""

from __future__ import annotations

from pathlib import Path

from keel.errors import ConfigError
from keel.ports.vector_index import VectorIndex


def open_vector_index(url: str, name: str, data_dir: Path) -> VectorIndex:
    """``sqlite:///...`` or ``embedded://``: usearch files in ``<data_dir>/vectors``;
    ``redis://``, ``rediss://``, ``valkey://``, ``unix://``: Redis/Valkey with RediSearch."""
    if url.startswith("sqlite:///") or url.startswith("embedded://"):
        from keel.storage.vector_usearch import UsearchVectorIndex

        return UsearchVectorIndex(Path(data_dir) / "vectors", name)
    if url.startswith(("redis://", "rediss://", "valkey://", "unix://")):
        from keel.storage.vector_redis import RedisVectorIndex

        return RedisVectorIndex(url, name)
    raise ConfigError(
        f"unsupported vector index URL scheme in {url.split('@')[-1]!r}: use embedded://, "
        "sqlite:///path (both keep usearch files under the data dir) or redis://host:port/0"
    )
