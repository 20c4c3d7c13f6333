"""One model call of a run (a sample, a vote or a judge) through keel's own pipeline.

Every call is an ordinary gateway request of the run's tenant and agent: the firewall,
the degradation ladder, metering, budgets and the request log all apply, and the request
log row carries the run id (a ``reasoning`` decision), so a run's cost is the sum of its
rows and shows up per tenant and agent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from keel.errors import UpstreamError
from keel.gateway.context import Principal
from keel.gateway.validation import content_text

if TYPE_CHECKING:
    from keel.gateway.services import Services

JSON = dict[str, Any]


@dataclass(frozen=True)
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    request_id: str


class ModelCaller(Protocol):
    async def __call__(self, principal: Principal, body: JSON, run_id: str,
                       purpose: str) -> Reply: ...


def reply_from(resp: JSON, *, cost_usd: float, request_id: str, prompt_tokens: int,
               completion_tokens: int) -> Reply:
    choices = resp.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the model answered without a choice")
    msg = choices[0].get("message") or {}
    return Reply(text=content_text(msg.get("content")), prompt_tokens=prompt_tokens,
                 completion_tokens=completion_tokens, cost_usd=cost_usd,
                 request_id=request_id)


class PipelineCaller:
    """Runs a chat request through the app's pipeline, as a client request would."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._seq = 0

    async def __call__(self, principal: Principal, body: JSON, run_id: str,
                       purpose: str) -> Reply:
        from keel.errors import KeelError
        from keel.gateway.context import RequestContext
        from keel.gateway.validation import validate_chat

        svc = self.svc
        validate_chat(body)
        spec = svc.models.get(body["model"])
        self._seq += 1
        ctx = RequestContext(
            id=f"{run_id}-{purpose}-{self._seq}", route="chat", body=body, model=spec,
            principal=principal, client_ip="127.0.0.1",
            headers={"x-keel-reasoning-run": run_id})
        ctx.decide("reasoning", purpose, run_id)
        try:
            await svc.pipeline(ctx)
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            ctx.latency_ms = ctx.elapsed_ms()
            svc.finish(ctx)
            raise
        svc.finish(ctx)
        return reply_from(ctx.response or {}, cost_usd=ctx.cost_usd, request_id=ctx.id,
                          prompt_tokens=ctx.usage.prompt_tokens,
                          completion_tokens=ctx.usage.completion_tokens)
