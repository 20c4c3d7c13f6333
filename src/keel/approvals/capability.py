"""Human approvals as a capability: durable DBOS waits, and the approval hook for held
tool calls and payments when those capabilities are on."""

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


class ApprovalsCapability(Capability):
    name = "approvals"
    paths = ("/v1/approvals", "/approvals", "/v1/workflows", "/v1/executions", "/v1/tasks")
    uses = ("tools", "wallets")
    every_worker = False  # HTTP, plus the workflow Map queue (job_queues)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.approvals.enabled

    @classmethod
    def job_queues(cls, settings: Settings) -> Sequence[str]:
        # keel.workflows.interpreter.MAP_QUEUE, named here without importing the
        # interpreter (tests/unit/test_worker_capabilities.py keeps them equal)
        return ["keel.workflows.map"] if settings.workflows.enabled else []

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.approvals import store
        from keel.workflows import store as workflow_store

        return [*store.MIGRATIONS, *workflow_store.MIGRATIONS]

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import approvals, workflows

        return [CliGroup("approvals", approvals.build,
                         "Human approvals: list, show, approve, deny."),
                CliGroup("workflows", workflows.build,
                         "Run Amazon States Language workflows durably (DBOS).")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.approvals.service import ApprovalsService
        from keel.jobs.runtime import JobRuntime
        from keel.tools.gateway import ToolGateway
        from keel.wallets.service import WalletService

        super().__init__(ctx)
        s = ctx.settings
        self.approvals = ApprovalsService(s, ctx.db, runtime=ctx.components.get(JobRuntime))
        ctx.components.put(self.approvals, owner=self.name)
        tools = ctx.components.find(ToolGateway)
        if tools is not None:  # @approval("required") tool calls become approvals
            from keel.approvals.tool_hook import ToolApprovalHook

            tools.approvals = ToolApprovalHook(self.approvals, s.approvals.tool_wait_s)
        wallets = ctx.components.find(WalletService)
        if wallets is not None:  # over-budget / @approval payments wait for a human
            from keel.approvals.payment_hook import PaymentApprovalHook

            wallets.approvals = PaymentApprovalHook(self.approvals, s.approvals.tool_wait_s)
        if tools is not None and self.approvals.workflows is not None:  # keel:tool:T tasks
            self.approvals.workflows.use_tools(tools)

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.approvals.routes import ApprovalRoutes

        app.include_router(ApprovalRoutes(svc, self.approvals).router())
        if self.approvals.workflows is not None:  # /v1/workflows, /v1/executions
            from keel.workflows.routes import WorkflowRoutes

            app.include_router(WorkflowRoutes(svc, self.approvals.workflows).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.approvals_page import ApprovalsPage
        from keel.web.workflows_page import WorkflowsPage

        pages: list[PageFactory] = [partial(ApprovalsPage, approvals=self.approvals)]
        if self.approvals.workflows is not None:
            pages.append(partial(WorkflowsPage, workflows=self.approvals.workflows))
        return pages

    async def start(self) -> None:
        await self.approvals.start()  # launches DBOS when there are waits to recover
