"""A pipeline of stages, each ``async def __call__(ctx, call_next)``.

The chain is composed once when the pipeline is built, so a request pays one function
call per stage. A stage may short-circuit by not calling ``call_next`` (after setting
``ctx.response``/``ctx.chunks``) or by raising a :class:`~keel.errors.KeelError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from keel.gateway.context import RequestContext

Next = Callable[[RequestContext], Awaitable[None]]


class Stage(Protocol):
    name: str

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage], terminal: Next) -> None:
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names in pipeline: {names}")
        handler = terminal
        for stage in reversed(self.stages):
            handler = _bind(stage, handler)
        self._handler = handler

    async def __call__(self, ctx: RequestContext) -> None:
        await self._handler(ctx)


def _bind(stage: Stage, nxt: Next) -> Next:
    async def call(ctx: RequestContext) -> None:
        await stage(ctx, nxt)

    return call
