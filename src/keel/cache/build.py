"""Assemble the cache stage from settings: store (KV + vector index), embedder, stats."""

from __future__ import annotations

import hashlib
import re

from prometheus_client import CollectorRegistry

from keel.cache.judge import Judge
from keel.cache.stage import CacheStage, RagTag
from keel.cache.stats import CacheStats
from keel.cache.store import CacheStore
from keel.config import Settings
from keel.errors import ConfigError
from keel.ports.embedder import Embedder
from keel.ports.kv import KV
from keel.providers.registry import ModelRegistry
from keel.storage.sql import Database
from keel.storage.vectors import open_vector_index

INDEX_NAME = "semantic-cache"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


def index_name(embedder: str) -> str:
    """One vector index per embedder: vectors of different models are never compared."""
    if embedder == DEFAULT_EMBEDDER:
        return INDEX_NAME  # the name the cache always used for MiniLM
    slug = re.sub(r"[^a-z0-9]+", "-", embedder.lower()).strip("-")[:40]
    digest = hashlib.blake2b(embedder.encode(), digest_size=4).hexdigest()
    return f"{INDEX_NAME}-{slug}-{digest}"


def build_cache(settings: Settings, kv: KV, db: Database, embedder: Embedder | None,
                registry: CollectorRegistry, *, rag_tag: RagTag | None = None,
                models: ModelRegistry | None = None) -> CacheStage:
    cs = settings.cache
    judges = {cs.judge_for(ns) for ns in cs.namespaces.values()} - {""}
    judge = None
    if judges:
        if models is None:
            raise ConfigError("cache judge configured but no model registry was given")
        for name in sorted(judges):
            spec = next((m for m in models.specs() if m.name == name), None)
            if spec is None or spec.kind != "chat":
                raise ConfigError(f"cache judge {name!r} must be a chat model of the model "
                                  "table ([[models]])")
        judge = Judge(models, kv)
    index = None
    if cs.semantic and embedder is not None:
        index = open_vector_index(cs.vector_url or "embedded://", index_name(embedder.name),
                                  settings.data_dir)
    store = CacheStore(kv, index, embedder.dim if embedder is not None else 0)
    stats = CacheStats(db, registry, cs.stats_flush_s)
    return CacheStage(cs, store, embedder, stats, rag_tag=rag_tag, judge=judge)
