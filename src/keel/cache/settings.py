"""``[cache]`` settings: layers, backend, threshold, TTL and namespaces."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from keel.settings_section import Section


class NamespaceSettings(Section):
    """Per-namespace overrides. ``per_user`` namespaces never use the shared cache."""

    threshold: float | None = None  # cosine; None: the [cache] default
    ttl_s: float | None = None  # None: the [cache] default
    per_user: bool = False
    semantic: bool = True

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not 0.5 <= v <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [0.5, 1], got {v}")
        return v


class CacheSettings(Section):
    enabled: bool = True
    exact: bool = True  # hash of the normalised request
    semantic: bool = True  # embedding of the last user turn, nearest neighbour, verifier
    # "" = embedded (usearch HNSW + SQLite beside the data dir); redis://host:port/0 for many
    # replicas (RediSearch HNSW). Entries themselves live in the KV port ([kv_url]).
    vector_url: str = ""
    threshold: float = 0.95  # cosine similarity a semantic hit needs, before the verifier
    verifier: bool = True
    ttl_s: float = 24 * 3600.0
    max_query_chars: int = 2000  # longer last turns are served by the exact layer only
    max_response_bytes: int = 256_000  # larger answers are not stored
    # Treat requests that carry the OpenAI ``user`` field as personal (bypass the cache).
    bypass_on_user_field: bool = False
    namespaces: dict[str, NamespaceSettings] = Field(
        default_factory=lambda: {"default": NamespaceSettings()}
    )
    stats_flush_s: float = 2.0

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float) -> float:
        if not 0.5 <= v <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [0.5, 1], got {v}")
        return v

    @field_validator("ttl_s")
    @classmethod
    def _ttl(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"ttl_s must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _default_namespace(self) -> CacheSettings:
        self.namespaces.setdefault("default", NamespaceSettings())
        for name in self.namespaces:
            if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"cache namespace {name!r}: use 1-64 letters, digits, - or _")
        return self

    def namespace(self, name: str) -> NamespaceSettings | None:
        return self.namespaces.get(name)

    def threshold_for(self, ns: NamespaceSettings) -> float:
        return self.threshold if ns.threshold is None else ns.threshold

    def ttl_for(self, ns: NamespaceSettings) -> float:
        return self.ttl_s if ns.ttl_s is None else ns.ttl_s
