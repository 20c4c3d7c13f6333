"""Auto-remediation as a capability: the weighted service proxy, detection, incidents and
the remediation run (clone, patch, sandboxed tests, canary, human approval)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keel.capability import BuildContext, Capability, CliGroup, PageFactory

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.services import Services
    from keel.storage.migrations import Migration


class RemediationCapability(Capability):
    name = "remediation"
    paths = ("/v1/remediation", "/svc")
    uses = ("approvals",)
    every_worker = False  # its runs are workflows the gateway starts and recovers

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.remediation.enabled

    @classmethod
    def how_to_enable(cls) -> str:
        return ("set `enabled = true` in the [remediation] table of keel.toml and list your "
                "services in [[remediation.services]] (see docs/remediation.md)")

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.remediation import store

        return store.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import remediation

        return [CliGroup("remediation", remediation.build,
                         "Remediation incidents: list and show (steps, cost, timeline).")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.approvals.service import ApprovalsService
        from keel.jobs.runtime import JobRuntime
        from keel.remediation.remediator import Remediator

        super().__init__(ctx)
        self.remediator = Remediator(ctx.settings, ctx.db)
        self.remediator.approvals = approvals = ctx.components.find(ApprovalsService)
        if approvals is not None:  # the reference's two buttons, on the Slack message
            from keel.remediation.steps import ACTION

            approvals.registry.label(ACTION, approve="Shift 100% Traffic",
                                     deny="Rollback & Page On-Call")
        self.remediator.use_runtime(ctx.components.get(JobRuntime))
        ctx.components.put(self.remediator, owner=self.name)

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.remediation.routes import RemediationRoutes

        if self.remediator.steps.fixer is None:
            self.remediator.steps.fixer = self._model_fixer(svc)
        app.include_router(RemediationRoutes(svc, self.remediator).router())

    def _model_fixer(self, svc: Services) -> Any:
        from keel.remediation.fixer import ModelFixer

        cfg = svc.settings.remediation
        model = cfg.model or svc.settings.default_model

        async def chat(body: dict[str, Any]) -> tuple[dict[str, Any], float, str | None]:
            from keel.gateway.context import Principal
            from keel.gateway.internal import InternalClient

            done = await InternalClient(svc).chat(
                Principal(key_id="remediation", tenant=cfg.tenant, agent="remediation"), body)
            return done.body, done.cost_usd, done.request_id

        return ModelFixer(chat, model, max_tokens=cfg.max_tokens,
                          max_prompt_chars=cfg.max_prompt_chars)

    def console_pages(self) -> Sequence[PageFactory]:
        from functools import partial

        from keel.web.remediation_page import RemediationPage

        return [partial(RemediationPage, remediator=self.remediator)]

    async def start(self) -> None:
        self.remediator.start_watching()  # launches DBOS in the background when watching

    async def stop(self) -> None:
        await self.remediator.stop()
