"""One model call of a run (a sample, a vote or a judge) through keel's own pipeline.

Every call is an ordinary gateway request of the run's tenant and agent: the degradation
ladder, metering, budgets and the request log all apply, and the request log row carries
the run id (a ``reasoning`` decision), so a run's cost is the sum of its rows and shows up
per tenant and agent. The firewall sees each call as an internal call of the run's end
user (:class:`~keel.firewall.identity.InternalCall`): the question was judged when the run
was requested, and a judge prompt is keel's text quoting it and the samples, so it is not
scanned again (a sample answer that reads like an attack must not fail the run or strike
anyone); the call is still refused once the end user or the key is banned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from keel.errors import UpstreamError
from keel.firewall.identity import internal_call
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
                       purpose: str, end_user: str | None = None) -> Reply: ...


def reply_from(resp: JSON, *, cost_usd: float, request_id: str, prompt_tokens: int,
               completion_tokens: int) -> Reply:
    choices = resp.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the model answered without a choice")
    msg = choices[0].get("message") or {}
    return Reply(text=content_text(msg.get("content")), prompt_tokens=prompt_tokens,
                 completion_tokens=completion_tokens, cost_usd=cost_usd,
                 request_id=request_id)


class InternalCaller:
    """Calls through :class:`~keel.gateway.internal.InternalClient` as the run's principal;
    the request log row carries the run id in ``x-keel-reasoning-run`` and a decision."""

    def __init__(self, svc: Services) -> None:
        from keel.gateway.internal import InternalClient

        self.client = InternalClient(svc)

    async def __call__(self, principal: Principal, body: JSON, run_id: str,
                       purpose: str, end_user: str | None = None) -> Reply:
        with internal_call(end_user, purpose):
            out = await self.client.chat(principal, body, headers={
                "x-keel-reasoning-run": run_id, "x-keel-reasoning-call": purpose,
                "x-keel-cache": "bypass"})
        return reply_from(out.body, cost_usd=out.cost_usd, request_id=out.request_id,
                          prompt_tokens=out.usage.prompt_tokens,
                          completion_tokens=out.usage.completion_tokens)
