"""``model = "reasoner/<name>"`` in /v1/chat/completions: the run answers the request.

The reasoning capability adds one virtual model per reasoner to the model table (so the
route validates it and /v1/models lists it) and this stage, placed right after the
firewall, answers requests for those models by running the reasoner. It does not call
the rest of the pipeline: the run's own samples and judges go through it and are metered
one by one, so the outer request costs nothing itself (no double counting) and carries the
run's cost in ``x-keel-cost-usd`` and the ``keel_reasoning`` field.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any, Final

from keel.config import FirewallSettings
from keel.errors import InvalidRequest
from keel.firewall.identity import end_user_id
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next
from keel.reasoning.engine import RunFailed
from keel.reasoning.service import ReasoningService
from keel.reasoning.store import Run

JSON = dict[str, Any]
PREFIX = "reasoner/"
RUN_HEADER = "x-keel-reasoning-run"
CALL_HEADER = "x-keel-reasoning-call"
PROVIDER: Final = "virtual"


def options(body: JSON) -> tuple[int | None, float | None]:
    """``keel_reasoning: {"n": ..., "budget_usd": ...}``, an extension field."""
    opts = body.get("keel_reasoning")
    if opts is None:
        return None, None
    if not isinstance(opts, dict):
        raise InvalidRequest("field 'keel_reasoning' must be an object with optional 'n' "
                             "and 'budget_usd'", param="keel_reasoning")
    unknown = sorted(str(k) for k in set(opts) - {"n", "budget_usd"})
    if unknown:
        raise InvalidRequest(f"unknown fields in 'keel_reasoning': {', '.join(unknown)} "
                             "(allowed: n, budget_usd)", param="keel_reasoning")
    return opts.get("n"), opts.get("budget_usd")


def summary(run: Run) -> JSON:
    return {"run_id": run.id, "status": run.status, "cost_usd": round(run.cost_usd, 10),
            "judge_calls": run.judge_calls, "citations": run.citations,
            "samples_by_status": run.public()["samples_by_status"]}


class ReasonerStage:
    name = "reasoning"

    def __init__(self, service: ReasoningService, firewall: FirewallSettings) -> None:
        self.service = service
        self.firewall = firewall  # where the end user's id comes from

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        if ctx.model.provider != PROVIDER or not ctx.model.name.startswith(PREFIX):
            run_id = ctx.headers.get(RUN_HEADER)
            if run_id:  # a run's own sample or judge call: the log row names the run
                ctx.decide("reasoning", ctx.headers.get(CALL_HEADER, "call"), run_id)
            await call_next(ctx)
            return
        if ctx.route != "chat":
            raise InvalidRequest(f"model {ctx.model.name!r} is a reasoner: use "
                                 "/v1/chat/completions", param="model")
        if ctx.body.get("n", 1) != 1:
            raise InvalidRequest("a reasoner returns one choice: leave 'n' out (set the "
                                 "number of samples with keel_reasoning.n)", param="n")
        n, budget = options(ctx.body)
        # the firewall stage (before this one) judged the question and checked bans; the
        # run's calls carry the end user so they stay theirs, never the whole key's
        end_user, _ = end_user_id(self.firewall, ctx.body, ctx.headers)
        run = await self.service.submit(ctx.principal, ctx.model.name[len(PREFIX):],
                                        ctx.body["messages"], n, budget, end_user)
        ctx.decide("reasoning", "run", run.id)
        ctx.response_headers["x-keel-reasoning-run"] = run.id
        if ctx.stream:
            ctx.chunks = self._stream(ctx, run)
            return
        run = await self.service.wait(run.id)
        if run.status != "succeeded":
            raise RunFailed(f"reasoning run {run.id} failed: {run.error}")
        ctx.output_text = run.answer or ""
        ctx.response_headers["x-keel-cost-usd"] = f"{run.cost_usd:.8f}"
        ctx.response = {
            "id": f"chatcmpl-{run.id}", "object": "chat.completion",
            "created": int(run.created_at), "model": ctx.model.name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": run.answer}}],
            "usage": {"prompt_tokens": run.prompt_tokens,
                      "completion_tokens": run.completion_tokens,
                      "total_tokens": run.prompt_tokens + run.completion_tokens},
            "keel_reasoning": summary(run),
        }

    async def _stream(self, ctx: RequestContext, run: Run) -> AsyncGenerator[JSON, None]:
        base = {"id": f"chatcmpl-{run.id}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": ctx.model.name}
        # progress: chunks with no choices and a keel_reasoning event (clients that do not
        # know the field skip them, like the usage chunk)
        async for ev in self.service.events(run.id):
            if ev["kind"] == "judge":
                ev = {k: ev[k] for k in ("seq", "kind", "key", "model", "cost_usd")}
            yield {**base, "choices": [], "keel_reasoning": ev}
        final = await self.service.store.get(run.id)
        assert final is not None
        if final.status != "succeeded":
            raise RunFailed(f"reasoning run {run.id} failed: {final.error}")
        ctx.output_text = final.answer or ""
        yield {**base, "choices": [{"index": 0, "finish_reason": None,
                                    "delta": {"role": "assistant",
                                              "content": final.answer}}]}
        yield {**base, "choices": [{"index": 0, "finish_reason": "stop", "delta": {}}],
               "keel_reasoning": summary(final)}
