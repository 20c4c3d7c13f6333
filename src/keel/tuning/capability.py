"""The tuning loop as a capability: feedback capture, the version registry and the stage
that serves a model's promoted version. Off by default (``[tuning] enabled = true``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.capability import BuildContext, Capability, CliGroup, PageFactory, Slot, StageSlot

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.services import Services
    from keel.storage.migrations import Migration
    from keel.tuning.trigger import TriggerLoop


def sanitizer(data_dir: Path) -> Any:
    """The shared PII sanitizer, keyed by a per-install secret (pseudonyms stay stable
    across datasets of one install and differ between installs)."""
    from keel.sanitize import Sanitizer
    from keel.storage.private_files import private_file

    path = data_dir / "tuning" / "sanitize.key"
    if not path.is_file() or path.stat().st_size == 0:
        private_file(path).write_bytes(os.urandom(32))
    return Sanitizer(key=path.read_bytes())


class _LazyScrubber:
    """Loads the sanitizer (and its recognisers) on the first dataset, not at start-up."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._impl: Any = None

    def sanitize(self, text: str) -> Any:
        if self._impl is None:
            self._impl = sanitizer(self.data_dir)
        return self._impl.sanitize(text)


class TuningCapability(Capability):
    name = "tuning"
    paths = ("/v1/feedback", "/v1/admin/tuning")
    uses = ("degrade",)  # its stage serves the model the ladder picked

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.tuning.enabled

    @classmethod
    def how_to_enable(cls) -> str:
        return "set `enabled = true` in the [tuning] table of keel.toml (see docs/tuning.md)"

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.tuning import store

        return store.MIGRATIONS

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.tuning import cli

        return [CliGroup("feedback", cli.build_feedback, "List and export user feedback."),
                CliGroup("train", cli.build_train,
                         "Fine-tune on corrections: run specs, versions, promote, rollback."),
                CliGroup("models", cli.build_versions, "Model versions, promote, rollback.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.tuning.feedback import FeedbackService
        from keel.tuning.loop import TuningLoop
        from keel.tuning.registry import VersionRegistry, VersionStage

        super().__init__(ctx)
        self.registry = VersionRegistry(ctx.db)
        self.stage = VersionStage(self.registry)
        self.loop = TuningLoop(ctx.settings, ctx.db, self.registry, ctx.models.provider,
                               _LazyScrubber(ctx.settings.data_dir))
        self.feedback = FeedbackService(ctx.db, ctx.settings.tuning)
        self.feedback.on_trainable = self.loop.maybe_trigger
        self.trigger: TriggerLoop | None = None
        from keel.jobs.runtime import JobRuntime

        runtime = ctx.components.find(JobRuntime)
        if runtime is not None:  # every app has one; embedding apps may not
            self.loop.bind(runtime)
        for obj in (self.registry, self.loop, self.feedback):
            ctx.components.put(obj, owner=self.name)

    def console_pages(self) -> Sequence[PageFactory]:
        from functools import partial

        from keel.web.tuning_page import TuningPage

        return [partial(TuningPage, feedback=self.feedback)]

    def stages(self) -> Sequence[StageSlot]:
        return [StageSlot(self.stage, Slot.ROUTING + 50)]

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.tuning.routes import TuningRoutes

        self.feedback.flush_log = svc.request_log.flush
        app.include_router(TuningRoutes(svc, self.feedback, self.registry, self.loop).router())

    async def start(self) -> None:
        if self.ctx.settings.tuning.auto_train:
            self.trigger = self.loop.trigger_loop()
            self.trigger.run_in_background()

    async def stop(self) -> None:
        if self.trigger is not None:
            await self.trigger.aclose()
        await self.loop.aclose()
