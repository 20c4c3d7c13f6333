"""How a batch line reaches a model: through keel's own request pipeline, so the
firewall, the cache, budgets, metering and the request log apply to batch lines exactly
as to interactive requests of the same key."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from keel.batch.runner import JSON, CallResult
from keel.errors import KeelError
from keel.gateway.context import Principal, RequestContext
from keel.gateway.internal import INTERNAL_IP

if TYPE_CHECKING:
    from keel.gateway.services import Services

# Batch lines skip the answer cache: each line is its own document (two invoices that
# read alike must not share an answer), and embedding every document to look it up would
# cost more CPU than the cache could save on a batch of distinct documents.
HEADERS = {"x-keel-source": "batch", "x-keel-cache": "bypass"}


class PipelineCall:
    """A :data:`~keel.batch.runner.LineCall` over one app's services: chat lines through
    :class:`~keel.gateway.internal.InternalClient`, completion lines the same way."""

    def __init__(self, svc: Services) -> None:
        from keel.gateway.internal import InternalClient

        self.svc = svc
        self.client = InternalClient(svc)

    async def __call__(self, principal: Principal, endpoint: str, body: JSON) -> CallResult:
        if endpoint == "/v1/chat/completions":
            done = await self.client.chat(principal, body, headers=HEADERS)
            return CallResult(done.body, done.request_id, done.usage.prompt_tokens,
                              done.usage.completion_tokens, done.cost_usd)
        return await self._completion(principal, body)

    async def _completion(self, principal: Principal, body: JSON) -> CallResult:
        svc = self.svc
        ctx = RequestContext(
            id="req_" + secrets.token_hex(10), route="completions",
            body=body, model=svc.models.get(body["model"]), principal=principal,
            client_ip=INTERNAL_IP, headers=dict(HEADERS))
        try:
            await svc.pipeline(ctx)
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            ctx.latency_ms = ctx.elapsed_ms()
            svc.finish(ctx)
            raise
        svc.finish(ctx)
        assert ctx.response is not None
        return CallResult(ctx.response, ctx.id, ctx.usage.prompt_tokens,
                          ctx.usage.completion_tokens, ctx.cost_usd)
