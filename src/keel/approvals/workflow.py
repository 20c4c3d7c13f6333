"""The approval workflow and the durable wait it shares with ASL ``.waitForTaskToken`` tasks.

Registered (as closures over the app's engine) by :func:`register`, called right before
``DBOS.launch()``; never at import. The approvals table is the source of truth for a
decision; the DBOS message on topic ``decision:<id>`` only wakes the workflow.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from keel.approvals.models import APPROVED, AUTO_APPROVED, PENDING

if TYPE_CHECKING:
    from keel.approvals.engine import ApprovalEngine

WORKFLOW_NAME = "keel.approvals.approval"


def topic(approval_id: str) -> str:
    return f"decision:{approval_id}"


def reminder_points(created_at: float, expires_at: float, fractions: list[float]) -> list[float]:
    span = expires_at - created_at
    return sorted(created_at + f * span for f in fractions if 0 < f < 1)


def register(engine: ApprovalEngine) -> None:
    """Define the DBOS steps and workflow for ``engine`` (call before DBOS.launch())."""
    from dbos import DBOS

    @DBOS.step(name="keel.approvals.notify")
    async def notify(approval_id: str, event: str) -> None:
        await engine.notify(approval_id, event)

    @DBOS.step(name="keel.approvals.resolve")
    async def resolve(approval_id: str) -> str:
        return await engine.resolve(approval_id)

    @DBOS.step(name="keel.approvals.execute")
    async def execute(approval_id: str) -> dict[str, Any]:
        return await engine.execute(approval_id)

    @DBOS.step(name="keel.approvals.deny")
    async def deny(approval_id: str, status: str) -> dict[str, Any]:
        return await engine.deny(approval_id, status)

    async def wait_for_decision(approval_id: str, created_at: float, expires_at: float,
                                reminders: list[float]) -> str:
        """Durable wait: recv until each reminder point, remind, then recv until expiry.

        Returns the final status (approved, denied or timed_out). Each recv records its
        deadline, so after a crash the wait resumes with the original expiry.
        """
        for point in reminder_points(created_at, expires_at, reminders):
            msg = await DBOS.recv_async(topic(approval_id),
                                        timeout_seconds=max(point - time.time(), 0.0))
            status = await resolve(approval_id)
            if status != PENDING:
                return status
            if msg is None:
                await notify(approval_id, "reminder")
        while True:
            await DBOS.recv_async(topic(approval_id),
                                  timeout_seconds=max(expires_at - time.time(), 0.0))
            status = await resolve(approval_id)
            if status != PENDING:
                return status

    @DBOS.workflow(name=WORKFLOW_NAME)
    async def approval(approval_id: str, status: str, created_at: float, expires_at: float,
                       reminders: list[float]) -> dict[str, Any]:
        if status == PENDING:
            await notify(approval_id, "requested")
            status = await wait_for_decision(approval_id, created_at, expires_at, reminders)
        if status in (APPROVED, AUTO_APPROVED):
            out = await execute(approval_id)
        else:
            out = await deny(approval_id, status)
        await notify(approval_id, "decided")
        return out

    engine.bind_workflow(approval, wait_for_decision)
