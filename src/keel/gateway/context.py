"""The typed request context every pipeline stage reads and writes."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal

from keel.config import ModelSpec
from keel.errors import KeelError
from keel.gateway.embedding_memo import EmbeddingMemo

Route = Literal["chat", "completions", "embeddings"]
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the API key."""

    key_id: str
    tenant: str
    agent: str | None = None
    admin: bool = False


ANONYMOUS = Principal(key_id="-", tenant="default")


@dataclass(frozen=True, slots=True)
class Decision:
    """One stage's verdict on a request, kept in the request log."""

    stage: str
    action: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Depth:
    """How much work the degradation ladder allows a request (set by the degrade stage)."""

    mode: str
    rag_top_k: int
    rag_context_tokens: int


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class RequestContext:
    id: str
    route: Route
    body: JSON
    model: ModelSpec
    principal: Principal
    client_ip: str
    headers: dict[str, str]
    stream: bool = False
    forwarded_ip: str | None = None  # the client address a trusted proxy reported
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    # set by the terminal stage (the provider call) ...
    response: JSON | None = None
    chunks: AsyncGenerator[JSON, None] | None = None
    # ... and by metering
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    output_text: str = ""
    status: int = 200
    error: KeelError | None = None
    decisions: list[Decision] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)
    depth: Depth | None = None  # set by the degradation ladder, read by the RAG stage
    # the degradation level that cut this request down (smaller model, token cap, shallower
    # RAG), if one did: its answer is not the full one, so the cache does not keep it
    degraded: str | None = None
    # embeddings computed for this request, shared by the stages that need them
    embeddings: EmbeddingMemo = field(default_factory=EmbeddingMemo)

    def decide(self, stage: str, action: str, detail: str = "") -> None:
        self.decisions.append(Decision(stage, action, detail))

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
