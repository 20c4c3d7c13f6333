"""Wallets, budgets and x402 payments as a capability; pays for paid tools when the tool
gateway is on, and lets Cedar decide payments."""

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


class WalletsCapability(Capability):
    name = "wallets"
    paths = ("/v1/fetch", "/v1/wallet", "/v1/admin/payments")
    uses = ("tools",)
    every_worker = False  # HTTP only

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.wallets.enabled

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.wallets import tables

        return tables.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import wallets, x402

        return [CliGroup("wallet", wallets.build,
                         "Agent wallets: create, fund, balance, ledger."),
                CliGroup("x402", x402.build, "x402 payments: the offline sandbox.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.tools.gateway import ToolGateway
        from keel.wallets.service import WalletService
        from keel.x402.client import PaidFetcher

        super().__init__(ctx)
        s = ctx.settings
        self.wallets = WalletService(s.wallets, ctx.db, ctx.metrics.registry)
        self.fetcher = PaidFetcher(self.wallets)
        ctx.components.put(self.wallets, owner=self.name)
        ctx.components.put(self.fetcher, owner=self.name)
        tools = ctx.components.find(ToolGateway)
        if tools is not None:  # paid MCP tools are paid from the agent's wallet
            from keel.x402.mcp_tools import PaidToolCalls

            tools.payments = PaidToolCalls(self.fetcher.payer)
            if s.wallets.sessions == "issued":  # x-keel-session: only sessions keel opened
                tools.sessions = self.wallets
            if s.wallets.cedar:  # every payment is Action::"x402:pay" for Cedar
                from keel.x402.policy import CedarPayments, policy_actions

                tools.extra_actions.extend(policy_actions(s))
                self.wallets.authorizer = CedarPayments(tools)

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.x402.routes import PaymentRoutes

        app.include_router(PaymentRoutes(svc, self.fetcher).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.wallets_page import WalletsPage

        return [partial(WalletsPage, wallets=self.wallets)]

    async def start(self) -> None:
        self.wallets.start()  # expiry sweeper for payment holds

    async def stop(self) -> None:
        await self.wallets.aclose()
        await self.fetcher.aclose()
