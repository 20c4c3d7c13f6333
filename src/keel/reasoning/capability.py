"""Scatter-gather reasoning as a capability: on when keel.toml has ``[[reasoners]]``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from keel.capability import (
    BuildContext,
    Capability,
    CliGroup,
    PageFactory,
    Slot,
    StageSlot,
)
from keel.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.context import Principal
    from keel.gateway.services import Services
    from keel.reasoning.calls import JSON, ModelCaller, Reply
    from keel.storage.migrations import Migration


class ReasoningCapability(Capability):
    name = "reasoning"
    paths = ("/v1/reasoning",)
    uses = ("firewall",)

    @classmethod
    def job_queues(cls, settings: Settings) -> Sequence[str]:
        # keel.reasoning.durable.queue_name (a test keeps them equal)
        return [f"keel.reasoning.{r.name}" for r in settings.reasoners]

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.reasoners)

    @classmethod
    def how_to_enable(cls) -> str:
        return ("add a [[reasoners]] table to keel.toml (name, workers, judge; see "
                "docs/reasoning.md)")

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.reasoning.store import MIGRATIONS

        return MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import reason

        return [CliGroup("reason", reason.build,
                         "Scatter-gather reasoning: ask a reasoner, watch and show runs.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.config import ModelSpec
        from keel.jobs.runtime import JobRuntime
        from keel.reasoning.durable import DurableRuns
        from keel.reasoning.engine import ReasoningEngine
        from keel.reasoning.service import ReasoningService
        from keel.reasoning.stage import PREFIX, PROVIDER
        from keel.reasoning.store import RunStore

        super().__init__(ctx)
        reasoners = ctx.settings.reasoners
        for r in reasoners:  # every model a recipe names must be in the model table
            for role, model in [*(("worker", w) for w in r.workers),
                                ("judge", r.judge_model), ("voter", r.voter_model)]:
                if model not in ctx.models or ctx.models.find(model).kind != "chat":
                    raise ConfigError(f"reasoner {r.name!r}: {role} model {model!r} is not "
                                      "a chat model in the model table ([[models]])")
            ctx.models.add_virtual(ModelSpec(
                name=PREFIX + r.name, provider=PROVIDER,
                context=ctx.models.get(r.judge_model).context))
        self.store = RunStore(ctx.db)
        self._caller = _LateCaller()
        self.engine = ReasoningEngine(reasoners, ctx.models, self.store, self._caller,
                                      embedder=ctx.models.embedder)
        self.service = ReasoningService(self.engine, self.store)
        # durable runs on the process's DBOS runtime; samples fan out on a queue per reasoner
        self.durable = DurableRuns(self.engine, ctx.components.get(JobRuntime), reasoners)
        self.service.launcher = self.durable.launch
        self.service.on_change.append(self.durable.pulse)
        self._caller.components = ctx.components
        ctx.components.put(self.service, owner=self.name)

    def stages(self) -> Sequence[StageSlot]:
        from keel.reasoning.stage import ReasonerStage

        # right after the firewall (which scans the question once) and before the cache
        # and the ladder, which apply to each sample and judge call instead
        return [StageSlot(ReasonerStage(self.service, self.ctx.settings.firewall),
                          Slot.CACHE - 10)]

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.firewall.stage import FirewallStage
        from keel.reasoning.routes import ReasoningRoutes

        # a run's question meets the firewall before it is queued, as a chat request would
        firewall = self.ctx.components.find(FirewallStage)
        app.include_router(ReasoningRoutes(svc, self.service, firewall).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.reasoning_page import ReasoningPage

        return [partial(ReasoningPage, service=self.service)]

    async def start(self) -> None:
        import asyncio

        self.durable.loop = asyncio.get_running_loop()
        await self.service.resume_unfinished()

    async def stop(self) -> None:
        await self.service.stop()


class _LateCaller:
    """Samples and judges go through the app's pipeline (``InternalClient``), which exists
    only once every capability is built: the services are looked up on first call (in a
    gateway and in a ``keel worker`` alike)."""

    def __init__(self) -> None:
        from keel.components import Components

        self.components: Components | None = None
        self._target: ModelCaller | None = None

    async def __call__(self, principal: Principal, body: JSON, run_id: str,
                       purpose: str, end_user: str | None = None) -> Reply:
        if self._target is None:
            from keel.gateway.services import Services
            from keel.reasoning.calls import InternalCaller

            if self.components is None or self.components.find(Services) is None:
                raise ConfigError("reasoning: model calls are not wired (no app services)")
            self._target = InternalCaller(self.components.get(Services))
        return await self._target(principal, body, run_id, purpose, end_user)
