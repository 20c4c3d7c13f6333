"""The agent tool gateway as a capability: Cedar policies in front of MCP tools."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, PageFactory

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.services import Services
    from keel.storage.migrations import Migration


class ToolsCapability(Capability):
    name = "tools"
    paths = ("/mcp", "/v1/tools", "/v1/admin/tool-decisions")
    uses = ("firewall",)  # tool arguments and results meet the same firewall
    every_worker = False  # HTTP/MCP only; workflow Map items get it through approvals

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.tools.enabled

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.policy import store
        from keel.tools import decision_log, spend

        return [*store.MIGRATIONS, *decision_log.MIGRATIONS, *spend.MIGRATIONS]

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import policy, tools

        return [CliGroup("policy", policy.build,
                         "Cedar tool policies: validate, apply, rollback, test, draft, shadow."),
                CliGroup("tools", tools.build, "Agent tool gateway: tools, decisions.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.firewall.stage import FirewallStage
        from keel.tools.gateway import ToolGateway

        super().__init__(ctx)
        self.gateway = ToolGateway(ctx.settings.tools, ctx.db)
        ctx.components.put(self.gateway, owner=self.name)
        firewall = ctx.components.find(FirewallStage)
        if firewall is not None:
            from keel.firewall.tools import ToolFirewall

            self.gateway.scanner = ToolFirewall(firewall)

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.tools.routes import install

        install(app, svc, self.gateway)

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.tools_page import ToolsPage

        return [partial(ToolsPage, gateway=self.gateway)]

    async def start(self) -> None:
        await self.gateway.start()  # connects to the configured MCP servers

    async def stop(self) -> None:
        await self.gateway.aclose()
