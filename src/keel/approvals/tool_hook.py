"""The tool gateway's approval hook: ``@approval("required")`` calls become approvals.

A held call becomes an approval request (action ``tool:<name>``, the arguments, the Cedar
policy ids as the reason) keyed by a hash of tenant, agent, tool and arguments. The hook
waits up to ``wait_s`` for a decision; an approval decided in time lets the gateway run the
call. Otherwise the agent gets ``pending`` with the approval id, and repeating the very same
call later finds that approval instead of filing a new one: once a human approved it, the
repeat runs, exactly once (the approval is consumed through the action ledger); a denied or
expired approval is reported as rejected once, and a further repeat files a new request.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, select

from keel.approvals import store
from keel.approvals.models import APPROVED, AUTO_APPROVED, PENDING, Approval, Proposal
from keel.tools.ports import ApprovalOutcome, ToolCall

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService


def call_key(call: ToolCall) -> str:
    blob = orjson.dumps({"t": call.principal.tenant, "a": call.agent, "tool": call.tool,
                         "args": call.arguments}, option=orjson.OPT_SORT_KEYS)
    return "tool-call:" + hashlib.sha256(blob).hexdigest()[:40]


def _latest(c: Connection, tenant: str, key: str) -> Approval | None:
    t = store.approvals
    row = c.execute(select(t.c.id).where(t.c.tenant == tenant, t.c.idempotency_key == key)
                    .order_by(t.c.created_at.desc()).limit(1)).first()
    return store.get(c, row[0]) if row else None


class ToolApprovalHook:
    def __init__(self, service: ApprovalsService, wait_s: float = 0.0) -> None:
        self.service = service
        self.wait_s = wait_s

    async def request_approval(self, call: ToolCall, policy_ids: list[str]) -> ApprovalOutcome:
        key = call_key(call)
        tenant = call.principal.tenant
        engine = self.service.engine
        found = await engine.db.run(lambda c: _latest(c, tenant, key))
        if found is not None and found.status == PENDING:
            return self._pending(found)
        if found is not None and found.status in (APPROVED, AUTO_APPROVED):
            if await self._consume(found):
                return self._approved(found)
        elif found is not None and not await self._consume(found):
            pass  # its denial was reported before: file a new request below
        elif found is not None:
            return ApprovalOutcome("rejected", f"approval {found.id} was {found.status}",
                                   approval_id=found.id, approver=found.decided_by)
        handle = await engine.request(Proposal(
            action=f"tool:{call.tool}", arguments=call.arguments, risk_level="HIGH",
            reason=f"Cedar policy {', '.join(policy_ids) or '(unnamed)'} requires a human "
                   f"approval for {call.tool}", requested_by=call.agent, tenant=tenant,
            idempotency_key=key))
        approval = handle.approval
        if approval.status == PENDING and self.wait_s > 0:
            approval = await handle.wait(self.wait_s)
        if approval.status == PENDING:
            return self._pending(approval)
        if approval.status in (APPROVED, AUTO_APPROVED) and await self._consume(approval):
            return self._approved(approval)
        await self._consume(approval)
        return ApprovalOutcome("rejected", f"approval {approval.id} was {approval.status}",
                               approval_id=approval.id, approver=approval.decided_by)

    async def _consume(self, a: Approval) -> bool:
        """Claim the approval for one run; False when it was used before."""
        def claim(c: Connection) -> bool:
            ledger_key = f"{a.id}:consumed"
            now = time.time()
            if store.ledger_begin(c, ledger_key, a.id, a.action, now) is not None:
                return False
            store.ledger_end(c, ledger_key, {"consumed_by": "tool-gateway"}, None, now)
            return True

        return bool(await self.service.engine.db.run(claim))

    @staticmethod
    def _pending(a: Approval) -> ApprovalOutcome:
        return ApprovalOutcome(
            "pending", f"approval {a.id} is waiting for a human (poll GET /v1/approvals/{a.id});"
                       " repeat this exact call once it is approved",
            approval_id=a.id)

    @staticmethod
    def _approved(a: Approval) -> ApprovalOutcome:
        extra: dict[str, Any] = {"status": a.status}
        return ApprovalOutcome("approved", approval_id=a.id, approver=a.decided_by, extra=extra)
