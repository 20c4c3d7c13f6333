"""How a batch line reaches a model: through keel's own request pipeline, so the
firewall, the cache, budgets, metering and the request log apply to batch lines exactly
as to interactive requests of the same key."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from keel.batch.runner import JSON, CallResult
from keel.errors import KeelError
from keel.gateway.context import Principal, RequestContext

if TYPE_CHECKING:
    from keel.gateway.services import Services

_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


class PipelineCall:
    """A :data:`~keel.batch.runner.LineCall` over one app's services."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    async def __call__(self, principal: Principal, endpoint: str, body: JSON) -> CallResult:
        svc = self.svc
        ctx = RequestContext(
            id=f"req_batch_{secrets.token_hex(8)}", route=_ROUTES[endpoint],  # type: ignore[arg-type]
            body=body, model=svc.models.get(body["model"]), principal=principal,
            client_ip="batch", headers={"x-keel-source": "batch"})
        try:
            await svc.pipeline(ctx)
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            ctx.latency_ms = ctx.elapsed_ms()
            svc.finish(ctx)
            exc.extra.setdefault("request_id", ctx.id)
            raise
        svc.finish(ctx)
        assert ctx.response is not None
        return CallResult(ctx.response, ctx.id, ctx.usage.prompt_tokens,
                          ctx.usage.completion_tokens, ctx.cost_usd)
