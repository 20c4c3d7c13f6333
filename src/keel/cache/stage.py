"""The cache stage: exact hit, else verified semantic hit, else call on and store the answer.

It runs right after the firewall. Personal requests (``x-keel-cache: bypass``, the ``user``
field when configured, per-user namespaces) skip it. A backend outage (KV, vector index or
embedder) is logged and counted and degrades to a miss: the request is still answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from keel.cache.judge import Judge
from keel.cache.keys import CacheKey, cache_key, tenant_tag
from keel.cache.personal import asks_about_own_data
from keel.cache.profiles import make_verifier
from keel.cache.replay import StreamAssembler, fresh, replay
from keel.cache.settings import DEFAULT_THRESHOLD, CacheSettings, NamespaceSettings, Profile
from keel.cache.stats import CacheStats
from keel.cache.store import CacheStore, Entry
from keel.cache.verifier import HitVerifier, Verifier
from keel.errors import InvalidRequest
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next
from keel.gateway.validation import last_user_text
from keel.ports.embedder import Embedder
from keel.ports.vector_index import Vectors

log = logging.getLogger("keel.cache")
JSON = dict[str, Any]
NAMESPACE_HEADER = "x-keel-cache-namespace"
CONTROL_HEADER = "x-keel-cache"
RagTag = Callable[[RequestContext], Awaitable[str]]


@dataclass(slots=True)
class _Plan:
    key: CacheKey
    ns: NamespaceSettings
    tenant: str
    model: str
    vector: Vectors | None = None


@dataclass(frozen=True, slots=True)
class Hit:
    entry: Entry
    layer: str  # exact | semantic
    similarity: float
    judge_usd: float = 0.0  # what confirming this hit with the judge cost


class CacheStage:
    name = "cache"

    def __init__(self, settings: CacheSettings, store: CacheStore, embedder: Embedder | None,
                 stats: CacheStats, *, rag_tag: RagTag | None = None,
                 judge: Judge | None = None) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder if settings.semantic else None
        self.stats = stats
        self.verifiers: dict[Profile, Verifier] = (
            {p: make_verifier(p) for p in ("strict", "balanced")} if settings.verifier else {})
        # embeddings of the short phrases the balanced verifier compares, most recent last
        self._phrases: OrderedDict[str, Vectors] = OrderedDict()
        self.rag_tag = rag_tag
        self.judge = judge
        self._strict = HitVerifier()
        self._pending: set[asyncio.Task[None]] = set()

    # -- the stage ------------------------------------------------------------------------

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        if ctx.route == "embeddings":
            await call_next(ctx)
            return
        ns_name, ns = self._namespace(ctx)
        reason = self._bypass_reason(ctx, ns)
        if reason is not None:
            ctx.response_headers[CONTROL_HEADER] = "bypass"
            ctx.decide("cache", "bypass", reason)
            self.stats.record(ctx.principal.tenant, ns_name, "bypass")
            await call_next(ctx)
            return
        plan: _Plan | None = None
        hit: Hit | None = None
        try:
            plan = await self._plan(ctx, ns_name, ns)
            hit = await self._lookup(ctx, plan)
        except Exception as exc:  # backend outage: answer anyway, as a miss
            log.warning("cache lookup failed, serving as a miss: %s", _brief(exc))
            self.stats.record(ctx.principal.tenant, ns_name, "error")
            ctx.response_headers[CONTROL_HEADER] = "miss"
            ctx.decide("cache", "error", _brief(exc))
            if plan is None:
                await call_next(ctx)
                return
        if hit is not None:
            self._serve(ctx, plan, hit)  # type: ignore[arg-type]  # plan is set on a hit
            return
        ctx.response_headers.setdefault(CONTROL_HEADER, "miss")
        await call_next(ctx)
        assert plan is not None
        if ctx.degraded is not None or ctx.model.name != plan.model:
            # a degraded answer (smaller model, token cap, shallower RAG) would be served
            # at full price after recovery, for the whole TTL
            ctx.decide("cache", "not stored", f"degraded ({ctx.degraded or ctx.model.name})")
            return
        if ctx.chunks is not None:
            ctx.chunks = self._store_stream(ctx, plan, ctx.chunks)
        elif ctx.response is not None:
            self._spawn(self._store(plan, ctx.response))

    # -- planning ---------------------------------------------------------------------------

    def _namespace(self, ctx: RequestContext) -> tuple[str, NamespaceSettings]:
        name = ctx.headers.get(NAMESPACE_HEADER) or "default"
        ns = self.settings.namespace(name)
        if ns is None:
            known = ", ".join(sorted(self.settings.namespaces))
            raise InvalidRequest(
                f"unknown cache namespace {name!r} in {NAMESPACE_HEADER}; configured: {known} "
                "(add it under [cache.namespaces] in keel.toml)", param=NAMESPACE_HEADER)
        return name, ns

    def _bypass_reason(self, ctx: RequestContext, ns: NamespaceSettings) -> str | None:
        control = ctx.headers.get(CONTROL_HEADER)
        if control is not None:
            if control.strip().lower() == "bypass":
                return "x-keel-cache: bypass"
            raise InvalidRequest(f"{CONTROL_HEADER} accepts only 'bypass', got {control!r}",
                                 param=CONTROL_HEADER)
        if ns.per_user:
            return "per-user namespace"
        if self.settings.bypass_on_user_field and ctx.body.get("user"):
            return "request carries a user id"
        if (self.settings.bypass_personal_questions and ctx.body.get("user")
                and asks_about_own_data(last_user_text(ctx.body)
                                        or str(ctx.body.get("prompt") or ""))):
            return "asks about the end user's own data (my order, my balance)"
        if ctx.body.get("n", 1) not in (1, None):
            return "n > 1"
        return None

    async def _plan(self, ctx: RequestContext, ns_name: str, ns: NamespaceSettings) -> _Plan:
        tenant = ctx.principal.tenant
        generation = await self.store.generation(ns_name, tenant_tag(tenant))
        rag = await self.rag_tag(ctx) if self.rag_tag is not None else ""
        key = cache_key(route=ctx.route, body=ctx.body, model=ctx.model.name, tenant=tenant,
                        namespace=ns_name, generation=generation, rag=rag)
        return _Plan(key, ns, tenant, ctx.model.name)

    # -- lookup -----------------------------------------------------------------------------

    async def _lookup(self, ctx: RequestContext, plan: _Plan) -> Hit | None:
        key = plan.key
        if self.settings.exact:
            entry = await self.store.get_exact(key)
            if entry is not None:
                return Hit(entry, "exact", 1.0)
        if (self.embedder is None or not plan.ns.semantic or key.query is None
                or len(key.query) > self.settings.max_query_chars):
            self.stats.record(plan.tenant, key.namespace, "miss")
            return None
        plan.vector = np.asarray(
            (await ctx.embeddings.embed(self.embedder, [key.query]))[0], np.float32)
        threshold = self.settings.threshold_for(plan.ns)
        verifier = self.verifiers.get(self.settings.profile_for(plan.ns))
        rejected = ""
        judge_usd = 0.0
        for cand in await self.store.search(key, plan.vector, k=3):
            if cand.similarity < threshold:
                break
            reason = None
            if verifier is not None and cand.entry.query is not None:
                phrases = await self._phrase_vectors(
                    verifier.needs(key.query, cand.entry.query))
                reason = verifier.check(key.query, cand.entry.query, phrases)
            judge = self.settings.judge_for(plan.ns)
            if (reason is None and judge and self.judge is not None
                    and cand.entry.query is not None
                    and not self._strict_accepts(key.query, cand.entry.query, cand.similarity)):
                verdict = await self.judge.same(plan.tenant, judge, key.query,
                                                cand.entry.query)
                judge_usd += verdict.usd
                ctx.response_headers["x-keel-cache-judge"] = (
                    ("yes" if verdict.same else "no") + (" (remembered)" if verdict.cached else ""))
                if not verdict.same:
                    reason = f"judge {judge} says the questions differ"
            if reason is None:
                return Hit(cand.entry, "semantic", cand.similarity, judge_usd)
            self.stats.reject(reason)
            rejected = rejected or f"{reason} (similarity {cand.similarity:.4f})"
        if judge_usd:
            self.stats.charge_judge(plan.tenant, key.namespace, judge_usd)
            ctx.response_headers["x-keel-cache-judge-usd"] = f"{judge_usd:.8f}"
        if rejected:
            ctx.response_headers["x-keel-cache-rejected"] = rejected[:200]
            ctx.decide("cache", "rejected", rejected)
        self.stats.record(plan.tenant, key.namespace, "rejected" if rejected else "miss")
        return None

    def _strict_accepts(self, query: str, cached: str, similarity: float) -> bool:
        return (similarity >= DEFAULT_THRESHOLD["strict"]
                and self._strict.check(query, cached) is None)

    async def _phrase_vectors(self, texts: list[str]) -> dict[str, Vectors]:
        """Embeddings of the verifier's phrases: one batched call for the ones not seen
        recently (the 4,096 most recent are kept)."""
        if not texts or self.embedder is None:
            return {}
        missing = [t for t in dict.fromkeys(texts) if t not in self._phrases]
        if missing:
            for text, vec in zip(missing, await self.embedder.embed(missing), strict=True):
                self._phrases[text] = np.asarray(vec, np.float32)
            while len(self._phrases) > 4096:
                self._phrases.popitem(last=False)
        out = {}
        for t in texts:
            self._phrases.move_to_end(t)
            out[t] = self._phrases[t]
        return out

    def _serve(self, ctx: RequestContext, plan: _Plan, hit: Hit) -> None:
        entry = hit.entry
        response = fresh(entry.response, ctx.id)
        usd = ctx.model.cost_usd(entry.prompt_tokens, entry.completion_tokens)
        self.stats.record(plan.tenant, plan.key.namespace, f"hit_{hit.layer}",
                          tokens=entry.prompt_tokens + entry.completion_tokens, usd=usd)
        if hit.judge_usd:  # the judge's call is what this hit cost
            self.stats.charge_judge(plan.tenant, plan.key.namespace, hit.judge_usd)
            usd -= hit.judge_usd
        h = ctx.response_headers
        h[CONTROL_HEADER] = "hit"
        h["x-keel-cache-layer"] = hit.layer
        h["x-keel-cache-similarity"] = f"{hit.similarity:.4f}"
        h["x-keel-cost-usd"] = f"{hit.judge_usd:.8f}"
        if hit.judge_usd:
            h["x-keel-cache-judge-usd"] = f"{hit.judge_usd:.8f}"
        h["x-keel-saved-usd"] = f"{usd:.8f}"
        ctx.decide("cache", f"hit_{hit.layer}", f"similarity {hit.similarity:.4f}")
        ctx.output_text = "".join(
            (c.get("message") or {}).get("content") or c.get("text") or ""
            for c in response.get("choices") or [])
        if ctx.stream:
            opts = ctx.body.get("stream_options") or {}
            ctx.chunks = replay(response, bool(isinstance(opts, dict)
                                               and opts.get("include_usage")))
            ctx.ttft_ms = ctx.elapsed_ms()
        else:
            ctx.response = response
        ctx.latency_ms = ctx.elapsed_ms()

    # -- administration ---------------------------------------------------------------------

    async def flush(self, namespace: str, tenant: str | None = None) -> int:
        """Drop a namespace's entries (one tenant's when given); returns how many."""
        if self.settings.namespace(namespace) is None:
            known = ", ".join(sorted(self.settings.namespaces))
            raise InvalidRequest(f"unknown cache namespace {namespace!r}; configured: {known}",
                                 param="namespace")
        await self.drain()
        return await self.store.flush(namespace, None if tenant is None else tenant_tag(tenant))

    # -- store ------------------------------------------------------------------------------

    async def _store_stream(self, ctx: RequestContext, plan: _Plan,
                            chunks: AsyncGenerator[JSON, None]) -> AsyncGenerator[JSON, None]:
        asm = StreamAssembler()
        complete = False
        try:
            async for chunk in chunks:
                asm.add(chunk)
                yield chunk
            complete = True
        finally:
            if complete:
                response = asm.result()
                if response is not None:
                    if "usage" not in response:
                        response["usage"] = {
                            "prompt_tokens": ctx.usage.prompt_tokens,
                            "completion_tokens": ctx.usage.completion_tokens,
                            "total_tokens": ctx.usage.total_tokens}
                    self._spawn(self._store(plan, response))

    async def _store(self, plan: _Plan, response: JSON) -> None:
        choices = response.get("choices") or []
        if not choices or any(c.get("finish_reason") not in ("stop", "length")
                              or (c.get("message") or {}).get("tool_calls") for c in choices):
            return
        if len(orjson.dumps(response)) > self.settings.max_response_bytes:
            return
        usage = response.get("usage") or {}
        entry = Entry(plan.key.exact, plan.key.query, response,
                      int(usage.get("prompt_tokens") or 0),
                      int(usage.get("completion_tokens") or 0), plan.model, time.time())
        try:
            vector = plan.vector
            if (vector is None and self.embedder is not None and plan.ns.semantic
                    and plan.key.query is not None
                    and len(plan.key.query) <= self.settings.max_query_chars):
                vector = np.asarray((await self.embedder.embed([plan.key.query]))[0],
                                    np.float32)
            await self.store.put(plan.key, entry, vector if plan.ns.semantic else None,
                                 self.settings.ttl_for(plan.ns))
            self.stats.record(plan.tenant, plan.key.namespace, "stored")
        except Exception as exc:
            log.warning("cache store failed: %s", _brief(exc))
            self.stats.record(plan.tenant, plan.key.namespace, "error")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for background stores (tests, shutdown); callable from any event loop."""
        loop = asyncio.get_running_loop()
        while self._pending:
            tasks = list(self._pending)
            if all(t.get_loop() is loop for t in tasks):
                await asyncio.gather(*tasks, return_exceptions=True)
            else:  # the gateway runs on another thread's loop: poll
                await asyncio.sleep(0.005)

    async def aclose(self) -> None:
        await self.drain()
        await self.stats.aclose()
        await self.store.aclose()


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
