"""The RAG stage: put the top-k chunks of an index into the prompt, within a token budget.

A request opts in with the ``x-keel-rag: <index>`` header or by asking for a model named
in ``[rag] models``; either way the index is looked up in the caller's own tenant. The
depth (top-k and context tokens) comes from the degradation level on ``ctx.depth`` when the
ladder is on, else from ``[rag]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.errors import KeelError
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next
from keel.gateway.validation import content_text
from keel.rag.retrieve import Passage, Retriever
from keel.rag.settings import RagSettings

PREAMBLE = ("Answer from the numbered context passages below when they are relevant, "
            "and cite them as [n].\n\n")


def build_context(passages: list[Passage], count_tokens: Callable[[str], int], budget: int
                  ) -> tuple[str, int, int]:
    """The context block, its tokens and how many passages fit in ``budget`` tokens."""
    parts = [PREAMBLE]
    used = count_tokens(PREAMBLE)
    n = 0
    for p in passages:
        block = f"[{n + 1}] {p.title}\n{p.text}\n\n" if p.title else f"[{n + 1}] {p.text}\n\n"
        cost = count_tokens(block) - 2  # without [CLS]/[SEP]
        if used + cost > budget:
            break
        parts.append(block)
        used += cost
        n += 1
    return "".join(parts).rstrip() + "\n", used, n


def query_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user":
                return content_text(m.get("content"))
        return ""
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def with_context(body: dict[str, Any], context: str) -> dict[str, Any]:
    """A copy of ``body`` with ``context`` as a system message after the caller's own."""
    messages = body.get("messages")
    if isinstance(messages, list):
        at = 0
        while at < len(messages) and isinstance(messages[at], dict) \
                and messages[at].get("role") in ("system", "developer"):
            at += 1
        new = [*messages[:at], {"role": "system", "content": context}, *messages[at:]]
        return {**body, "messages": new}
    return {**body, "prompt": f"{context}\n{body.get('prompt', '')}"}


class RagStage:
    name = "rag"

    def __init__(self, retriever: Retriever, settings: RagSettings) -> None:
        self.retriever = retriever
        self.settings = settings

    def index_for(self, ctx: RequestContext) -> str | None:
        named = ctx.headers.get(self.settings.header)
        if named:
            return named.strip()
        requested = ctx.body.get("model")
        if isinstance(requested, str) and requested in self.settings.models:
            return self.settings.models[requested]
        return self.settings.models.get(ctx.model.name)

    async def cache_tag(self, ctx: RequestContext) -> str:
        """``index@version`` when the request uses RAG (the cache keys answers on it), else
        ``""``. An unknown or empty index tags ``index@?``: this stage rejects it anyway."""
        name = self.index_for(ctx)
        if not name:
            return ""
        try:
            info = await self.retriever.info(ctx.principal.tenant, name)
        except KeelError:
            return f"{name}@?"
        return f"{name}@{info.version}"

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        index = self.index_for(ctx) if ctx.route != "embeddings" else None
        if index is None:
            await call_next(ctx)
            return
        depth = ctx.depth
        top_k = depth.rag_top_k if depth else self.settings.top_k
        budget = depth.rag_context_tokens if depth else self.settings.context_tokens
        query = query_text(ctx.body)
        if top_k <= 0 or budget <= 0 or not query.strip():
            ctx.decide("rag", "skip", f"{index}: top_k={top_k} budget={budget}")
            await call_next(ctx)
            return
        info, passages = await self.retriever.search(ctx.principal.tenant, index, query, top_k,
                                                      ctx.embeddings)
        text, used, n = build_context(passages, self.retriever.embedder.count_tokens, budget)
        ctx.body = with_context(ctx.body, text)
        ctx.response_headers["x-keel-rag"] = f"{index}@v{info.version}; passages={n}"
        ctx.decide("rag", "context",
                   f"{index} v{info.version}: {n} of {len(passages)} passages, {used} tokens")
        await call_next(ctx)
