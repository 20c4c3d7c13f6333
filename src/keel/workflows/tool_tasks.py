"""``keel:tool:T`` tasks: the registered tool ``T`` called through the tool gateway as the
principal that started the execution, so Cedar decides as for any call by that key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keel.errors import NotFound
from keel.gateway.context import Principal
from keel.workflows import store as wstore
from keel.workflows.machine import TaskFailed

if TYPE_CHECKING:
    from keel.storage.sql import Database
    from keel.tools.gateway import ToolGateway


def starter(ex: wstore.Execution) -> Principal:
    """``started_by`` is ``agent:NAME`` or ``key:ID`` (see WorkflowService.start)."""
    kind, _, who = ex.started_by.partition(":")
    if kind == "agent":
        return Principal(key_id=f"workflow:{ex.id}", tenant=ex.tenant, agent=who)
    return Principal(key_id=who or ex.started_by, tenant=ex.tenant)


class ToolTasks:
    def __init__(self, gateway: ToolGateway, db: Database) -> None:
        self.gateway = gateway
        self.db = db

    def has(self, name: str) -> bool:
        return name in self.gateway.tools

    async def __call__(self, execution_id: str, tool: str, arguments: Any) -> Any:
        ex = await self.db.run(lambda c: wstore.get_execution(c, execution_id))
        if ex is None:
            raise NotFound(f"no execution {execution_id!r} to call tool {tool!r} for")
        if not isinstance(arguments, dict):
            raise TaskFailed("States.TaskFailed", f"tool {tool!r} takes an object of "
                             f"arguments, got {type(arguments).__name__}")
        _id, _decision, result = await self.gateway.call(starter(ex), tool, arguments)
        text = "\n".join(getattr(c, "text", "") for c in result.content)
        if result.is_error:
            raise TaskFailed("Tool.Error", text or f"tool {tool!r} failed")
        if result.structured_content is not None:
            return result.structured_content
        return text
