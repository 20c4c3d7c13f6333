"""Approvals inside the gateway: handler registry and engine, on the app's job runtime."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from keel.approvals.engine import ApprovalEngine
from keel.approvals.handlers import HandlerRegistry
from keel.config import Settings
from keel.errors import ConfigError
from keel.jobs.runtime import JobRuntime, system_database_url
from keel.storage.sql import Database

if TYPE_CHECKING:
    from keel.workflows.service import WorkflowService

log = logging.getLogger("keel.approvals")


class ApprovalsService:
    """Built by the approvals capability on the app's :class:`JobRuntime`; standalone
    (CLI runs, benchmarks, tests) it makes a runtime of its own and stops it too."""

    def __init__(self, settings: Settings, db: Database, *,
                 runtime: JobRuntime | None = None,
                 registry: HandlerRegistry | None = None, executor_id: str | None = None,
                 worker: bool = False) -> None:
        self.settings = settings
        self.registry = registry or HandlerRegistry()
        if registry is None:
            self.registry.load_modules(settings.approvals.handler_modules)
        self._owns_runtime = runtime is None
        self.runtime = runtime or JobRuntime(settings, executor_id=executor_id, worker=worker)
        self.worker = self.runtime.worker
        self.engine = ApprovalEngine(settings, db, self.registry, sender=self._send,
                                     starter=self.ensure_started)
        self.runtime.on_launch(self._register)
        if not self.worker:  # the gateway repairs approvals; a worker serves queues
            self.runtime.after_launch(self.engine.reconcile)
        self.workflows: WorkflowService | None = None
        if settings.workflows.enabled:  # ASL executions share this DBOS runtime
            from keel.workflows.interpreter import MAP_QUEUE, MAP_QUEUE_POLL_S
            from keel.workflows.service import WorkflowService

            self.workflows = WorkflowService(self)
            self.runtime.queue(  # distributed Map items: every keel process serves them
                MAP_QUEUE, worker_concurrency=settings.workflows.map_worker_concurrency,
                polling_interval_s=MAP_QUEUE_POLL_S)

    async def _send(self, workflow_id: str, topic: str, message: dict[str, Any],
                    key: str) -> None:
        from dbos import DBOS

        await self.ensure_started()

        await DBOS.send_async(workflow_id, message, topic, idempotency_key=key)
        self.runtime.wake()

    def _register(self) -> None:
        from keel.approvals import workflow
        from keel.workflows import interpreter

        workflow.register(self.engine)
        interpreter.register(self.engine, self._call_tool, self.runtime.wake_queue)

    async def _call_tool(self, execution_id: str, tool: str, arguments: Any) -> Any:
        caller = self.workflows.tool_caller if self.workflows is not None else None
        if caller is None:
            raise ConfigError("tool tasks need the tool gateway ([tools] enabled = true)")
        return await caller(execution_id, tool, arguments)

    async def start(self) -> None:
        if self.workflows is not None:
            await self.workflows.load_files()
        await self.runtime.resume()

    async def ensure_started(self) -> None:
        await self.runtime.ensure_started()

    async def stop(self) -> None:
        """Stop the runtime when this service made it (the app stops its own)."""
        if self._owns_runtime:
            await self.runtime.stop()


class ClientSender:
    """Wakes workflows from a process that does not run DBOS (the CLI): ``DBOSClient``."""

    def __init__(self, settings: Settings) -> None:
        self.url = system_database_url(settings)

    async def __call__(self, workflow_id: str, topic: str, message: dict[str, Any],
                       key: str) -> None:
        from dbos import DBOSClient

        def send() -> None:
            client = DBOSClient(system_database_url=self.url)
            try:
                client.send(workflow_id, message, topic, idempotency_key=key)
            finally:
                client.destroy()

        await asyncio.to_thread(send)
