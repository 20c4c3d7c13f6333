"""The prompt-injection firewall as a capability: first stage of the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from keel.capability import (
    BuildContext,
    Capability,
    CliGroup,
    DoctorCheck,
    PageFactory,
    Slot,
    StageSlot,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.services import Services


class FirewallCapability(Capability):
    name = "firewall"
    paths = ("/v1/admin/firewall",)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.firewall.enabled

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import firewall

        return [CliGroup("firewall", firewall.build,
                         "Prompt-injection firewall: test, eval, bans, allow-list.")]

    @classmethod
    def doctor_checks(cls, settings: Settings) -> Sequence[DoctorCheck]:
        def rules() -> str:
            from keel.firewall.engine import Firewall
            from keel.firewall.semantic import AttackCorpus

            fw = Firewall.build(settings.firewall.model_copy(update={"semantic": False}), None)
            corpus = AttackCorpus.default() if settings.firewall.semantic else None
            return (f"{len(fw.matcher.rules)} rules on {fw.matcher.engine}"
                    + (f", semantic corpus of {len(corpus)} attack vectors" if corpus else ""))

        return [DoctorCheck("firewall", True, rules)]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.firewall.engine import Firewall
        from keel.firewall.stage import FirewallMetrics, FirewallStage
        from keel.firewall.state import FirewallState

        super().__init__(ctx)
        fs = ctx.settings.firewall
        self.state = FirewallState(ctx.kv, fs)
        self.firewall = Firewall.build(fs, ctx.models.embedder(),
                                       cache_dir=ctx.settings.data_dir / "cache" / "hyperscan")
        self.stage = FirewallStage(self.firewall, self.state,
                                   FirewallMetrics(ctx.metrics.registry, self.state))
        ctx.components.put(self.state, owner=self.name)
        ctx.components.put(self.firewall, owner=self.name)
        ctx.components.put(self.stage, owner=self.name)  # tool traffic meets it too

    def stages(self) -> Sequence[StageSlot]:
        return [StageSlot(self.stage, Slot.EDGE)]

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.firewall.routes import FirewallAdminRoutes

        app.include_router(FirewallAdminRoutes(svc, self.state).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.firewall_page import FirewallPage

        return [partial(FirewallPage, state=self.state)]

    async def start(self) -> None:
        await self.state.start()

    async def stop(self) -> None:
        await self.state.aclose()
