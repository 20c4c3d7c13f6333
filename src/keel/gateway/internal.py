"""Model calls made by keel itself (reasoning samples, judges, generators), through the
same pipeline as a client's request: firewall, cache, degradation, budgets, metering and
the request log apply, and the cost lands on the tenant and agent of ``principal``.

Only the HTTP layer is skipped (no socket, no JSON round trip). Errors are the
:class:`~keel.errors.KeelError` a client would have received as a 4xx/5xx.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from keel.errors import KeelError
from keel.gateway.context import JSON, Principal, RequestContext, Usage
from keel.gateway.services import Services
from keel.gateway.validation import validate_chat

INTERNAL_IP = "127.0.0.1"


@dataclass
class Completion:
    """One answered chat completion: the OpenAI-shaped body plus what keel measured."""

    body: JSON
    request_id: str
    usage: Usage
    cost_usd: float
    latency_ms: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        choices = self.body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        return str(message.get("content") or "")


class InternalClient:
    """``await InternalClient(svc).chat(principal, body)``: a chat completion as
    ``principal``; ``headers`` carry the same ``x-keel-*`` controls a client may send."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def _context(self, principal: Principal, body: JSON, headers: dict[str, str] | None,
                 *, stream: bool) -> RequestContext:
        body = {**body, "stream": stream}
        validate_chat(body)
        spec = self.svc.models.get(body["model"])
        return RequestContext(
            id="req_" + secrets.token_hex(10), route="chat", body=body, model=spec,
            principal=principal, client_ip=INTERNAL_IP,
            headers={k.lower(): v for k, v in (headers or {}).items()}, stream=stream)

    async def chat(self, principal: Principal, body: JSON, *,
                   headers: dict[str, str] | None = None) -> Completion:
        ctx = self._context(principal, body, headers, stream=False)
        try:
            await self.svc.pipeline(ctx)
        except KeelError as exc:
            self._fail(ctx, exc)
            raise
        except BaseException:
            self._fail(ctx, KeelError(f"internal error (request id {ctx.id})"))
            raise
        self.svc.finish(ctx)
        assert ctx.response is not None, "the pipeline answers or raises"
        return Completion(body=ctx.response, request_id=ctx.id, usage=ctx.usage,
                          cost_usd=ctx.cost_usd, latency_ms=ctx.latency_ms,
                          headers=dict(ctx.response_headers))

    async def stream(self, principal: Principal, body: JSON, *,
                     headers: dict[str, str] | None = None) -> AsyncIterator[JSON]:
        """The chunks of a streamed chat completion (usage stays inside keel's metering);
        the request is logged when the iteration ends, however it ends."""
        ctx = self._context(principal, body, headers, stream=True)
        try:
            await self.svc.pipeline(ctx)
        except KeelError as exc:
            self._fail(ctx, exc)
            raise
        try:
            if ctx.chunks is None:  # answered whole (e.g. a cache hit): one chunk
                if ctx.response is not None:
                    yield ctx.response
                return
            async for chunk in ctx.chunks:
                yield chunk
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            raise
        finally:
            if ctx.chunks is not None:
                await ctx.chunks.aclose()
            self.svc.finish(ctx)

    def _fail(self, ctx: RequestContext, exc: KeelError) -> None:
        ctx.error = exc
        ctx.status = exc.http_status
        ctx.latency_ms = ctx.elapsed_ms()
        self.svc.finish(ctx)
