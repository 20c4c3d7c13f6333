"""The exact + semantic cache as a capability, right after the firewall."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, PageFactory, Slot, StageSlot

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.context import RequestContext
    from keel.gateway.services import Services
    from keel.storage.migrations import Migration


class CacheCapability(Capability):
    name = "cache"
    paths = ("/v1/admin/cache",)
    # answers are keyed on the RAG index version and the tuned model version they came from
    uses = ("rag", "tuning")

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.cache.enabled

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.cache import stats

        return stats.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import cache

        return [CliGroup("cache", cache.build,
                         "Semantic cache: flush namespaces, stats, evaluate the operating "
                         "point.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.cache.build import build_cache
        from keel.rag.stage import RagStage
        from keel.tuning.registry import VersionRegistry

        super().__init__(ctx)
        rag = ctx.components.find(RagStage)
        tuned = ctx.components.find(VersionRegistry)
        tags = [t.cache_tag for t in (rag, tuned) if t is not None]

        async def tag(rctx: RequestContext) -> str:
            return "|".join([await t(rctx) for t in tags])

        s = ctx.settings
        self.stage = build_cache(s, ctx.kv, ctx.db, ctx.models.embedder_for(s.cache.embedder),
                                 ctx.metrics.registry,
                                 rag_tag=tag if tags else None, models=ctx.models)
        ctx.components.put(self.stage, owner=self.name)

    def stages(self) -> Sequence[StageSlot]:
        return [StageSlot(self.stage, Slot.CACHE)]

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.cache.routes import CacheAdminRoutes

        app.include_router(CacheAdminRoutes(svc, self.stage).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.cache_page import CachePage

        return [partial(CachePage, cache=self.stage)]

    async def start(self) -> None:
        self.stage.stats.start()

    async def stop(self) -> None:
        await self.stage.aclose()
