"""The degradation ladder and spend breaker as a capability (model, RAG depth, caps)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, PageFactory, Slot, StageSlot

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.services import Services
    from keel.storage.migrations import Migration


class DegradeCapability(Capability):
    name = "degrade"
    paths = ("/v1/admin/degrade",)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.degrade.active

    @classmethod
    def how_to_enable(cls) -> str:
        return "set `enabled = true` in the [degrade] table of keel.toml (see docs/degrade.md)"

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.degrade import audit

        return audit.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import mode

        return [CliGroup("mode", mode.build,
                         "Degradation ladder: show, set and release the mode; flip log.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.degrade.service import Degrader

        super().__init__(ctx)
        self.degrader = Degrader(ctx.kv, ctx.db, ctx.settings.degrade, ctx.models.specs(),
                                 ctx.metrics.registry)
        ctx.components.put(self.degrader, owner=self.name)

    def stages(self) -> Sequence[StageSlot]:
        return [StageSlot(self.degrader.stage, Slot.ROUTING)]

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.degrade.routes import DegradeAdminRoutes

        app.include_router(DegradeAdminRoutes(svc, self.degrader).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.mode_page import ModePage

        return [partial(ModePage, degrader=self.degrader)]

    async def start(self) -> None:
        await self.degrader.start()

    async def stop(self) -> None:
        await self.degrader.aclose()
