"""Executions as a service: registered definitions (versioned), StartExecution,
DescribeExecution, list, stop and history, run by the gateway's DBOS runtime.

Only the long-running gateway runs executions, so exactly one process (its pinned DBOS
executor) recovers them after a crash; the CLI is a client of the HTTP API.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from keel.errors import (
    ConfigError,
    InvalidRequest,
    KeelError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from keel.gateway.context import Principal
from keel.workflows import definition
from keel.workflows import store as wstore
from keel.workflows.access import WorkflowAccess
from keel.workflows.tasks import ToolCaller

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")


def payload_too_large(what: str, size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is {size} bytes; the limit is {limit} bytes "
                           "([workflows] max_payload_bytes). Pass a reference instead (a URL, "
                           "an object-store key or a row id) and let the task fetch the data")


class WorkflowService:
    def __init__(self, approvals: ApprovalsService) -> None:
        self.approvals = approvals
        self.settings = approvals.settings
        self.cfg = self.settings.workflows
        self.db = approvals.engine.db
        text = self.cfg.agent_policy
        if self.cfg.agent_policy_file is not None:
            try:
                text = self.cfg.agent_policy_file.read_text()
            except OSError as exc:
                raise ConfigError(f"[workflows] agent_policy_file cannot be read: {exc}"
                                  ) from None
        self.access = WorkflowAccess(text)
        self.tool_caller: ToolCaller | None = None  # set when the tool gateway runs
        self.tool_exists: Callable[[str], bool] = lambda _name: False

    def use_tools(self, gateway: Any) -> None:
        """Serve ``keel:tool:T`` tasks through the tool gateway."""
        from keel.workflows.tool_tasks import ToolTasks

        tools = ToolTasks(gateway, self.db)
        self.tool_caller, self.tool_exists = tools, tools.has

    # -- definitions ---------------------------------------------------------------------

    def handler_check(self, kind: str, target: str) -> str | None:
        registry = self.approvals.registry
        if kind == "python" and not registry.has(target):
            return (f"no handler registered for {target!r} (registered: "
                    f"{', '.join(registry.names()) or 'none'}); add a module with "
                    "register(registry) to [approvals] handler_modules")
        if kind == "tool" and not self.tool_exists(target):
            return f"no registered tool {target!r} (is the tool gateway enabled?)"
        return None

    def parse(self, raw: bytes, source: str = "the body") -> dict[str, Any]:
        if len(raw) > self.cfg.max_definition_bytes:
            raise PayloadTooLarge(f"the definition is {len(raw)} bytes; the limit is "
                                  f"{self.cfg.max_definition_bytes} "
                                  "([workflows] max_definition_bytes)")
        return definition.parse(raw, self.handler_check, source=source)

    @staticmethod
    def check_name(name: str) -> None:
        if not NAME.match(name):
            raise InvalidRequest("a workflow name is 1-80 letters, digits, '.', '_' or '-', "
                                 "starting with a letter or digit", param="name")

    async def put(self, name: str, raw: bytes, by: str) -> dict[str, Any]:
        self.check_name(name)
        version = await self._store(name, self.parse(raw), by)
        return {"object": "workflow", "name": name, "version": version}

    async def load_files(self) -> None:
        for name, path in self.cfg.files.items():
            self.check_name(name)
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise InvalidRequest(f"[workflows] files.{name}: {path} cannot be read: {exc}"
                                     ) from None
            try:
                defn = self.parse(raw, source=str(path))
            except InvalidRequest as exc:
                raise InvalidRequest(f"[workflows] files.{name} ({path}): {exc.message}"
                                     ) from None
            await self._store(name, defn, "keel.toml")

    async def _store(self, name: str, defn: dict[str, Any], by: str) -> int:
        now = time.time()
        return await self.db.run(lambda c: wstore.put_definition(c, name, defn, by, now))

    async def get(self, name: str, version: int | None = None) -> dict[str, Any]:
        got = await self.db.run(lambda c: wstore.get_definition(c, name, version))
        if got is None:
            raise NotFound(f"no workflow named {name!r}"
                           + (f" with version {version}" if version else "")
                           + "; register it with PUT /v1/workflows/{name}")
        return {"object": "workflow", "name": name, "version": got[0], "definition": got[1]}

    async def definitions(self) -> list[dict[str, Any]]:
        return await self.db.run(wstore.list_definitions)

    # -- executions ------------------------------------------------------------------------

    async def start(self, name: str, data: Any, who: Principal, version: int | None = None
                    ) -> wstore.Execution:
        """StartExecution: checks everything first; nothing starts when a check fails."""
        wf = await self.get(name, version)
        if who.agent is not None and not who.admin:
            verdict = self.access.may_start(who.agent, who.tenant, name)
            if not verdict.allowed:
                raise PermissionDenied(f"agent {who.agent!r} may not start workflow "
                                       f"{name!r}: {verdict.reason}")
        size = len(orjson.dumps(data))
        if size > self.cfg.max_payload_bytes:
            raise payload_too_large("the execution input", size, self.cfg.max_payload_bytes)
        defn = wf["definition"]
        definition.check(defn, self.handler_check)  # handlers may have changed since PUT
        eid, now = wstore.new_execution_id(), time.time()
        by = f"agent:{who.agent}" if who.agent else f"key:{who.key_id}"
        await self.db.run(lambda c: wstore.insert_execution(
            c, execution_id=eid, workflow=name, version=wf["version"], tenant=who.tenant,
            started_by=by, data=data, now=now))
        opts = {"execution_id": eid, "workflow": name, "started_at": now, "tenant": who.tenant,
                "max_payload": self.cfg.max_payload_bytes}
        try:
            await self.approvals.engine.run_asl(defn, data, workflow_id=eid, opts=opts)
        except Exception as exc:
            why = str(exc)
            await self.db.run(lambda c: wstore.finish_execution(
                c, eid, wstore.FAILED, error="Keel.StartFailed", cause=why, now=time.time()))
            raise
        got = await self.db.run(lambda c: wstore.get_execution(c, eid))
        assert got is not None
        return got

    async def describe(self, eid: str, who: Principal) -> wstore.Execution:
        got = await self.db.run(lambda c: wstore.get_execution(c, eid))
        if got is None or (not who.admin and got.tenant != who.tenant):
            raise NotFound(f"no execution with id {eid!r}")
        return got

    async def executions(self, who: Principal, *, workflow: str | None = None,
                         status: str | None = None, limit: int = 100) -> list[wstore.Execution]:
        if status is not None and status not in wstore.STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(wstore.STATUSES)}",
                                 param="status")
        tenant = None if who.admin else who.tenant
        return await self.db.run(lambda c: wstore.list_executions(
            c, workflow=workflow, status=status, tenant=tenant, limit=limit))

    async def stop(self, eid: str, who: Principal, error: str | None, cause: str | None
                   ) -> wstore.Execution:
        """StopExecution: ABORTED now; the DBOS workflow and its branches are cancelled."""
        from dbos import DBOS

        ex = await self.describe(eid, who)
        if ex.status != wstore.RUNNING:
            return ex
        now = time.time()

        def write(c: Any) -> None:
            if wstore.finish_execution(c, eid, wstore.ABORTED, error=error, cause=cause,
                                       now=now):
                wstore.add_event(c, eid, "end", "ExecutionAborted", None,
                                 {"error": error, "cause": cause,
                                  "by": who.agent or f"key:{who.key_id}"},
                                 now)

        await self.db.run(write)
        await self.approvals.ensure_started()
        await DBOS.cancel_workflow_async(eid)
        children = await DBOS.list_workflows_async(workflow_id_prefix=eid + ".")
        for w in children:
            await DBOS.cancel_workflow_async(w.workflow_id)
        await self._deny_waiting(eid, who)
        return await self.describe(eid, who)

    async def _deny_waiting(self, eid: str, who: Principal) -> None:
        """Close the approvals the stopped execution waited for (audited as denied)."""
        from keel.approvals import store as astore
        from keel.approvals.engine import Decider

        ids = await self.db.run(lambda c: astore.pending_of_workflow(c, eid))
        by = Decider(actor=f"execution-stop:{who.agent or who.key_id}", via="api")
        for aid in ids:
            with contextlib.suppress(KeelError):  # decided meanwhile
                await self.approvals.engine.decide("deny", by, approval_id=aid,
                                                   note=f"execution {eid} was stopped")

    async def history(self, eid: str, who: Principal) -> list[dict[str, Any]]:
        await self.describe(eid, who)
        return await self.db.run(lambda c: wstore.history(c, eid))
