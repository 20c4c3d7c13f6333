"""Batches as a capability: OpenAI's Files and Batch APIs, lines as durable jobs on the
``keel.batch`` queue, served by scale-to-zero ``keel worker`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from keel.capability import BuildContext, Capability, CliGroup, PageFactory

if TYPE_CHECKING:
    from fastapi import FastAPI

    from keel.batch.runner import LineRunner
    from keel.batch.scaler import Scaler
    from keel.config import Settings
    from keel.gateway.services import Services
    from keel.ports.provider import ChatProvider
    from keel.storage.migrations import Migration


log = logging.getLogger("keel.batch")
QUEUE = "keel.batch"


class BatchCapability(Capability):
    name = "batch"
    paths = ("/v1/batches", "/v1/files")
    every_worker = False  # its lines run only in workers serving its queue

    @classmethod
    def job_queues(cls, settings: Settings) -> Sequence[str]:
        return [QUEUE]  # keel.batch.jobs.QUEUE (a test keeps them equal)

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return settings.batch.enabled

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        from keel.batch import store

        return store.MIGRATIONS

    @classmethod
    async def prepare_worker(cls, settings: Settings,
                             queues: Sequence[str]) -> Mapping[str, ChatProvider]:
        # a tuned model's serving version (its adapter) resolves through the version
        # registry, which exists once the services are built: start() warms those
        if QUEUE not in queues or settings.tuning.enabled:
            return {}
        from keel.batch.warm import preload_queued

        return await preload_queued(settings)

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        from keel.cli import batch

        return [CliGroup("batch", batch.build,
                         "OpenAI-style batches: submit JSONL, status, results, cost.")]

    def __init__(self, ctx: BuildContext) -> None:
        from keel.batch import store
        from keel.batch.jobs import BatchJobs
        from keel.batch.service import BatchService
        from keel.jobs.runtime import JobRuntime

        super().__init__(ctx)
        s = ctx.settings
        self.service = BatchService(s.batch, ctx.db, ctx.models)
        ctx.components.put(self.service, owner=self.name)
        self.runtime = ctx.components.get(JobRuntime)
        self._runner: LineRunner | None = None
        self.jobs = BatchJobs(self.runtime, s.batch, self.runner)
        self.service.enqueue = self.jobs.enqueue
        self.service.drop = self.jobs.cancel
        self.scaler: Scaler | None = None
        self._warming: asyncio.Task[None] | None = None
        if s.batch.autoscale and not self.runtime.worker:
            from keel.batch.scaler import Scaler

            config = os.environ.get("KEEL_CONFIG")
            self.scaler = Scaler(s, lambda: ctx.db.run(store.open_lines),
                                 config=Path(config) if config else None)
            self.service.on_work = self.scaler.poke

    def runner(self) -> LineRunner:
        """The line runner (built on first use, in the process that runs lines)."""
        if self._runner is None:
            from keel.batch.calls import PipelineCall
            from keel.batch.runner import LineRunner
            from keel.gateway.services import Services

            svc = self.ctx.components.get(Services)
            # the key is checked at every line, uncached: a revocation stops the batch at
            # its next line in every worker
            self._runner = LineRunner(self.ctx.db, self.ctx.settings.batch, PipelineCall(svc),
                                      key_active=svc.keys.active)
        return self._runner

    def install(self, app: FastAPI, svc: Services) -> None:
        from keel.batch.routes import BatchRoutes

        app.include_router(BatchRoutes(svc, self.service).router())

    def console_pages(self) -> Sequence[PageFactory]:
        from keel.web.batch_page import BatchPage

        return [partial(BatchPage, batches=self.service)]

    async def start(self) -> None:
        if self.runtime.worker:
            if QUEUE in self.runtime.served():  # load the first lines' model meanwhile
                self._warming = asyncio.create_task(self._warm_up(), name="keel-batch-warm")
            return
        from keel.batch import schemas, store

        # What taking a batch needs is loaded now, so it is part of the idle baseline:
        # launched by the first batch instead, DBOS and the schema compiler stayed in the
        # gateway for good (~35 MB measured), so its RSS after a batch never came back
        # to where it was before. With batch off none of this is loaded.
        await self.runtime.ensure_started()
        await asyncio.to_thread(schemas.preload)
        # unfinished batches after a restart: queue what a crash left out, start workers
        if await self.ctx.db.run(store.active_batches):
            await self.service.resume()

    async def _warm_up(self) -> None:
        from keel.batch import store
        from keel.batch.warm import warm_up
        from keel.gateway.services import Services

        try:
            models = await self.ctx.db.run(store.queued_models)
        except Exception as exc:  # nothing lost: the first line loads what it needs
            log.warning("batch warm-up: could not read the queued lines: %s", exc)
            return
        await warm_up(self.ctx.components.get(Services), models)

    async def stop(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warming
        await self.service.aclose()
        if self.scaler is not None:
            await self.scaler.aclose()
