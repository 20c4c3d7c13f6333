"""RAG as a capability: indexes, retrieval, and the stage that adds context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, Slot, StageSlot

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.firewall.stage import FirewallStage
    from keel.storage.migrations import Migration


class RagCapability(Capability):
    name = "rag"

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.rag.enabled

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.rag import catalog

        return catalog.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import rag

        return [CliGroup("rag", rag.build, "RAG: ingest, list and search indexes.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.rag.retrieve import Retriever
        from keel.rag.stage import RagStage

        super().__init__(ctx)
        s = ctx.settings
        self.retriever = Retriever(ctx.db, s.rag, s.data_dir, ctx.models.embedder())
        self.stage = RagStage(self.retriever, s.rag, self._firewall)
        ctx.components.put(self.retriever, owner=self.name)
        ctx.components.put(self.stage, owner=self.name)

    def _firewall(self) -> FirewallStage | None:
        """The firewall stage that screens retrieved passages, if that capability is on."""
        from keel.firewall.stage import FirewallStage

        return self.ctx.components.find(FirewallStage)

    def stages(self) -> Sequence[StageSlot]:
        return [StageSlot(self.stage, Slot.CONTEXT)]

    async def stop(self) -> None:
        await self.retriever.aclose()
