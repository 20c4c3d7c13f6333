"""Approvals inside the gateway: handler registry, engine and DBOS runtime for one app."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.approvals.engine import ApprovalEngine
from keel.approvals.handlers import HandlerRegistry
from keel.approvals.runtime import DbosRuntime, system_database_url
from keel.config import Settings
from keel.errors import ConfigError
from keel.storage.sql import Database

if TYPE_CHECKING:
    from keel.workflows.service import WorkflowService

log = logging.getLogger("keel.approvals")
EXECUTOR_SCAN_S = 5.0  # how often the leader looks for workers that died


class ApprovalsService:
    """Built in ``build_services``; DBOS launches in the app lifespan (``start``)."""

    def __init__(self, settings: Settings, db: Database, *,
                 registry: HandlerRegistry | None = None, executor_id: str | None = None,
                 worker: bool = False) -> None:
        self.settings = settings
        self.registry = registry or HandlerRegistry()
        if registry is None:
            self.registry.load_modules(settings.approvals.handler_modules)
        self.runtime = DbosRuntime(settings, executor_id=executor_id, worker=worker)
        self.worker = worker
        self.engine = ApprovalEngine(settings, db, self.registry, sender=self._send,
                                     starter=self.ensure_started)
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.workflows: WorkflowService | None = None
        if settings.workflows.enabled:  # ASL executions share this DBOS runtime
            from keel.workflows.service import WorkflowService

            self.workflows = WorkflowService(self)

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
        interpreter.register(self.engine, self._call_tool)

    async def _call_tool(self, execution_id: str, tool: str, arguments: Any) -> Any:
        caller = self.workflows.tool_caller if self.workflows is not None else None
        if caller is None:
            raise ConfigError("tool tasks need the tool gateway ([tools] enabled = true)")
        return await caller(execution_id, tool, arguments)

    def _has_state(self) -> bool:
        url = system_database_url(self.settings)
        return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists()

    async def start(self) -> None:
        """Launch DBOS now when there may be waits to recover; otherwise on first use, so
        an app that never requests an approval does not pay for DBOS's start-up."""
        if self.workflows is not None:
            await self.workflows.load_files()
        if self._has_state():
            await self.ensure_started()

    async def ensure_started(self) -> None:
        if self.runtime.launched:
            return
        async with self._lock:
            if not self.runtime.launched:
                await asyncio.to_thread(self.runtime.launch, self._register)
                if not self.worker:  # the gateway repairs approvals; a worker serves queues
                    await self.engine.reconcile()
                if self.runtime.lease is not None and self.runtime.lease.leader:
                    self._watcher = asyncio.create_task(self._watch_executors(),
                                                        name="keel-executors")

    async def _watch_executors(self) -> None:
        """The leader resumes the workflows of gateway workers that died while it runs."""
        while True:
            await asyncio.sleep(EXECUTOR_SCAN_S)
            try:
                await asyncio.to_thread(self.runtime.recover_dead)
            except Exception as exc:  # keep watching; the next scan retries
                log.warning("approvals: recovering a dead executor failed: %s", exc)

    async def stop(self) -> None:
        """Destroy DBOS (and its registry) and give the loop back a default executor: DBOS
        made its own executor the loop's default, and destroying DBOS shuts that down."""
        from concurrent.futures import ThreadPoolExecutor

        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if not self.runtime.launched:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def shutdown() -> None:
            try:
                self.runtime.shutdown()
                loop.call_soon_threadsafe(done.set_result, None)
            except BaseException as exc:
                loop.call_soon_threadsafe(done.set_exception, exc)

        import threading

        threading.Thread(target=shutdown, name="keel-dbos-shutdown", daemon=True).start()
        await done
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="asyncio"))


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
