"""``[cache]`` settings: layers, backend, profile, threshold, TTL and namespaces."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from keel.settings_section import Section

# strict: cos >= 0.95 + every content word must match; balanced: cos >= 0.78 + reject only
# contradictions (keel.cache.profiles). Thresholds are for the default MiniLM embedder.
Profile = Literal["strict", "balanced"]
DEFAULT_THRESHOLD: dict[str, float] = {"strict": 0.95, "balanced": 0.78}


class NamespaceSettings(Section):
    """Per-namespace overrides. ``per_user`` namespaces never use the shared cache."""

    threshold: float | None = None  # cosine; None: the [cache] default, else the profile's
    profile: Profile | None = None  # None: the [cache] profile
    # chat model (model table) that confirms hits balanced serves but strict would not;
    # None: the [cache] judge; "" : no judge
    judge: str | None = None
    ttl_s: float | None = None  # None: the [cache] default
    per_user: bool = False
    semantic: bool = True

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not 0.5 <= v <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [0.5, 1], got {v}")
        return v

    @field_validator("ttl_s")
    @classmethod
    def _ttl(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:  # entries would expire as they are written
            raise ValueError(f"ttl_s must be positive, got {v}")
        return v


class CacheSettings(Section):
    enabled: bool = True
    exact: bool = True  # hash of the normalised request
    semantic: bool = True  # embedding of the last user turn, nearest neighbour, verifier
    # "" = embedded (usearch HNSW + SQLite beside the data dir); redis://host:port/0 for many
    # replicas (RediSearch HNSW). Entries themselves live in the KV port ([kv_url]).
    vector_url: str = ""
    # model-table name of an embedding model ("" = the built-in all-MiniLM-L6-v2). Each
    # embedder has its own vector index, so switching never compares vectors across models.
    embedder: str = ""
    profile: Profile = "balanced"
    # cosine similarity a semantic hit needs before the verifier; None: the profile's default
    threshold: float | None = None
    verifier: bool = True
    judge: str = ""  # default judge model for every namespace ("" = none); see cache/judge.py
    ttl_s: float = 24 * 3600.0
    max_query_chars: int = 2000  # longer last turns are served by the exact layer only
    max_response_bytes: int = 256_000  # larger answers are not stored
    # Treat requests that carry the OpenAI ``user`` field as personal (bypass the cache).
    bypass_on_user_field: bool = False
    # a request with a `user` id that asks about the asker's own data ("Where is my order?",
    # "What's my balance?"; not how-to questions) bypasses: its answer differs per end user
    bypass_personal_questions: bool = True
    namespaces: dict[str, NamespaceSettings] = Field(
        default_factory=lambda: {"default": NamespaceSettings()}
    )
    stats_flush_s: float = 2.0

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and not 0.5 <= v <= 1.0:
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

    def profile_for(self, ns: NamespaceSettings) -> Profile:
        return self.profile if ns.profile is None else ns.profile

    def judge_for(self, ns: NamespaceSettings) -> str:
        return self.judge if ns.judge is None else ns.judge

    def threshold_for(self, ns: NamespaceSettings) -> float:
        if ns.threshold is not None:
            return ns.threshold
        if self.threshold is not None and ns.profile in (None, self.profile):
            return self.threshold
        return DEFAULT_THRESHOLD[self.profile_for(ns)]

    def ttl_for(self, ns: NamespaceSettings) -> float:
        return self.ttl_s if ns.ttl_s is None else ns.ttl_s
