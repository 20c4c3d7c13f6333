"""The tool gateway's approval hook: ``@approval("required")`` calls become approvals.

A held call becomes an approval request (action ``tool:<name>``, the arguments, the Cedar
policy ids as the reason) keyed by a hash of tenant, agent, tool and arguments. The hook
waits up to ``wait_s`` for a decision; an approval decided in time lets the gateway run the
call. Otherwise the agent gets ``pending`` with the approval id, and repeating the very same
call later finds that approval instead of filing a new one: once a human approved it, the
repeat runs, exactly once (:class:`keel.approvals.oneshot.OneShotApprovals`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keel.approvals.models import Proposal
from keel.approvals.oneshot import OneShotApprovals, request_key
from keel.tools.ports import ApprovalOutcome, ToolCall

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService


def call_key(call: ToolCall) -> str:
    return request_key("tool-call", {"t": call.principal.tenant, "a": call.agent,
                                     "tool": call.tool, "args": call.arguments})


class ToolApprovalHook:
    def __init__(self, service: ApprovalsService, wait_s: float = 0.0) -> None:
        self.approvals = OneShotApprovals(service, wait_s, consumer="tool-gateway")

    async def request_approval(self, call: ToolCall, policy_ids: list[str]) -> ApprovalOutcome:
        def proposal() -> Proposal:
            return Proposal(
                action=f"tool:{call.tool}", arguments=call.arguments, risk_level="HIGH",
                reason=f"Cedar policy {', '.join(policy_ids) or '(unnamed)'} requires a human "
                       f"approval for {call.tool}", requested_by=call.agent,
                tenant=call.principal.tenant, idempotency_key=call_key(call))

        return await self.approvals.ask(call.principal.tenant, call_key(call), proposal,
                                        "repeat this exact call once it is approved")
