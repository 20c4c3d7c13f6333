"""Synthetic QA as a capability: the ``keel qa`` CLI group (sanitize, suites, runs, review).

Off by default (``[qa] enabled = true``); its CLI group exists whenever keel is installed,
since sanitizing a file or running a suite against a staging URL needs no running app.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, PageFactory

if TYPE_CHECKING:
    from keel.config import Settings
    from keel.storage.migrations import Migration


class QaCapability(Capability):
    name = "qa"
    every_worker = False

    @classmethod
    def job_queues(cls, settings: Settings) -> Sequence[str]:
        return ["keel.qa.swarm"]  # keel.qa.durable.SWARM_QUEUE (a test keeps them equal)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.qa.enabled

    @classmethod
    def how_to_enable(cls) -> str:
        return "set `enabled = true` in the [qa] table of keel.toml (see docs/qa.md)"

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.qa import tables

        return tables.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.qa import cli

        return [CliGroup("qa", cli.build,
                         "Synthetic QA: sanitize logs, build prompt suites, run the swarm "
                         "against a target and gate on the judge's verdicts.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.jobs import JobRuntime
        from keel.qa.durable import DurableRuns

        super().__init__(ctx)
        # durable runs: the run/batch workflows and the swarm queue (served by every
        # keel process, `keel worker`s included); DBOS itself launches on first use
        self.durable = DurableRuns(ctx.db, ctx.components.get(JobRuntime))
        ctx.components.put(self.durable, owner=self.name)

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.qa_page import QaPage

        return [QaPage]
