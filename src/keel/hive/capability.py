"""The hive as a capability: shared streaming context for multi-agent work (off by default)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, PageFactory, Slot, StageSlot

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.services import Services

# right after the firewall (a blocked prompt writes nothing), before the cache (a cached
# answer is teed too)
TEE_SLOT = Slot.EDGE + 50


class HiveCapability(Capability):
    name = "hive"
    paths = ("/v1/hive",)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.hive.enabled

    @classmethod
    def how_to_enable(cls) -> str:
        return "set `enabled = true` in the [hive] table of keel.toml (see docs/hive.md)"

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import hive

        return [CliGroup("hive", hive.build,
                         "Hive: list tasks, print or follow a stream, collect expired ones.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.hive.service import HiveService, open_store

        super().__init__(ctx)
        self.hive = HiveService(open_store(ctx.settings.hive, ctx.settings.data_dir),
                                ctx.settings.hive)
        ctx.components.put(self.hive, owner=self.name)
        self._gc: asyncio.Task[None] | None = None

    def stages(self) -> Sequence[StageSlot]:
        from keel.hive.stage import HiveTeeStage

        return [StageSlot(HiveTeeStage(self.hive), TEE_SLOT)]

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.hive.files_routes import HiveFileRoutes
        from keel.hive.routes import HiveRoutes

        app.include_router(HiveRoutes(svc, self.hive).router())
        app.include_router(HiveFileRoutes(svc, self.hive).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.hive_page import HivePage

        return [partial(HivePage, hive=self.hive)]

    async def start(self) -> None:
        every = self.ctx.settings.hive.gc_interval_s
        if every > 0:
            self._gc = asyncio.create_task(self.hive.gc_loop(every), name="keel.hive.gc")

    async def stop(self) -> None:
        if self._gc is not None:
            self._gc.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc
            self._gc = None
        await self.hive.aclose()
