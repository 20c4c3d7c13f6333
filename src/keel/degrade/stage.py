"""The degradation stage: pick the level's model, RAG depth and token cap; meter spend.

Runs after the firewall and cache and before RAG. The level is an in-memory read; the
cost of each request (set by metering, further down the pipeline) is added to the rolling
counters when the response -- or the stream -- is done.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from keel.degrade.flags import ModeFlags
from keel.degrade.meter import RollingMeter
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next

JSON = dict[str, Any]
HEADER = "x-keel-mode"


class DegradeStage:
    name = "degrade"

    def __init__(self, flags: ModeFlags, meter: RollingMeter) -> None:
        self.flags = flags
        self.meter = meter
        self.metering = True  # off while no alarm reads the meter (nothing would flush it)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        level = self.flags.level_for(ctx.principal.tenant)
        ctx.response_headers[HEADER] = level.name
        if ctx.route == "embeddings":
            await call_next(ctx)
            return
        ctx.depth = level.depth
        if level.index > 0:  # below the top level: whatever it changes cuts the answer down
            ctx.degraded = level.name
        served = level.models.get(ctx.model.name)
        if served is not None and served.name != ctx.model.name:
            ctx.decide("degrade", "model", f"{level.name}: {ctx.model.name} -> {served.name}")
            ctx.model = served
        if level.max_tokens is not None:
            cap = level.max_tokens
            capped: dict[str, int] = {k: min(int(ctx.body.get(k) or cap), cap)
                                      for k in ("max_tokens", "max_completion_tokens")
                                      if k in ctx.body}
            if not capped:
                capped = {"max_tokens": cap}
            ctx.body = {**ctx.body, **capped}
        if not self.metering:
            await call_next(ctx)
            return
        try:
            await call_next(ctx)
        except BaseException:
            self.meter.add(ctx.principal.tenant, ctx.cost_usd)
            raise
        if ctx.chunks is not None:
            ctx.chunks = self._after_stream(ctx, ctx.chunks)
        else:
            self.meter.add(ctx.principal.tenant, ctx.cost_usd)

    async def _after_stream(self, ctx: RequestContext, chunks: AsyncGenerator[JSON, None]
                            ) -> AsyncGenerator[JSON, None]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()  # runs metering's finally, which sets ctx.cost_usd
            self.meter.add(ctx.principal.tenant, ctx.cost_usd)
