"""How a batch line reaches a model: through keel's own request pipeline, so the
firewall, the cache, budgets, metering and the request log apply to batch lines exactly
as to interactive requests of the same key."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from keel.batch.runner import JSON, CallFailed, CallResult
from keel.errors import KeelError
from keel.gateway.context import Principal, RequestContext
from keel.gateway.internal import INTERNAL_IP
from keel.gateway.validation import validate_chat

if TYPE_CHECKING:
    from keel.gateway.services import Services

# Batch lines skip the answer cache: each line is its own document (two invoices that
# read alike must not share an answer), and embedding every document to look it up would
# cost more CPU than the cache could save on a batch of distinct documents.
HEADERS = {"x-keel-source": "batch", "x-keel-cache": "bypass"}


class PipelineCall:
    """A :data:`~keel.batch.runner.LineCall` over one app's services: each line is one
    request context through the pipeline, logged like any request (as
    :class:`~keel.gateway.internal.InternalClient` does), and the context's usage, cost
    and served model come back with the answer or with the error."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def __call__(self, principal: Principal, endpoint: str, body: JSON) -> CallResult:
        svc = self.svc
        chat = endpoint == "/v1/chat/completions"
        if chat:
            body = {**body, "stream": False}
            validate_chat(body)
        ctx = RequestContext(
            id="req_" + secrets.token_hex(10), route="chat" if chat else "completions",
            body=body, model=svc.models.get(body["model"]), principal=principal,
            client_ip=INTERNAL_IP, headers=dict(HEADERS))
        try:
            await svc.pipeline(ctx)
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            ctx.latency_ms = ctx.elapsed_ms()
            svc.finish(ctx)
            raise CallFailed(exc, request_id=ctx.id, prompt_tokens=ctx.usage.prompt_tokens,
                             completion_tokens=ctx.usage.completion_tokens,
                             cost_usd=ctx.cost_usd, model=ctx.model.name,
                             on_local=ctx.model.provider == "local") from exc
        except BaseException:
            ctx.error = KeelError(f"internal error (request id {ctx.id})")
            ctx.status = 500
            ctx.latency_ms = ctx.elapsed_ms()
            svc.finish(ctx)
            raise
        svc.finish(ctx)
        assert ctx.response is not None, "the pipeline answers or raises"
        return CallResult(ctx.response, ctx.id, ctx.usage.prompt_tokens,
                          ctx.usage.completion_tokens, ctx.cost_usd, model=ctx.model.name,
                          on_local=ctx.model.provider == "local")
