"""Ports the tool gateway depends on: human approval, payments and per-session spend.

The approvals capability (its own issue) plugs in an :class:`ApprovalHook`; without one,
calls whose permitting policy says ``@approval("required")`` are denied. The wallets
capability plugs in :class:`ToolPayments` so paid MCP tools (x402) are paid from the agent's
wallet; without it their "payment required" answer goes back to the agent as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import mcp_types as types

from keel.gateway.context import Principal

# where a paid tool call's receipt travels in the result's _meta (keel.x402.mcp_tools)
PAYMENT_RECEIPT_META = "keel/payment"


def payment_headers(receipt: Any) -> dict[str, str]:
    """``x-keel-payment-*`` response headers for a receipt dict (none without a payment)."""
    if not isinstance(receipt, dict):
        return {}
    return {"x-keel-payment-id": str(receipt.get("id")),
            "x-keel-payment-usd": str(receipt.get("amount"))}


@dataclass(frozen=True)
class ToolCall:
    """A tool call that passed Cedar (or awaits approval)."""

    id: str  # the decision id in the tool decision log
    tool: str
    server: str
    arguments: dict[str, Any]
    principal: Principal
    agent: str
    session_id: str
    policy_version: int | None


@dataclass(frozen=True)
class ApprovalOutcome:
    status: Literal["approved", "rejected", "pending"]
    message: str = ""
    approval_id: str | None = None
    approver: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ApprovalHook(Protocol):
    async def request_approval(self, call: ToolCall, policy_ids: list[str]) -> ApprovalOutcome:
        """Hold ``call`` for a human; return the outcome (or ``pending`` with an id)."""
        ...


class ToolPayments(Protocol):
    async def handle(self, call: ToolCall, result: types.CallToolResult,
                     retry: Callable[[dict[str, Any]], Awaitable[types.CallToolResult]]
                     ) -> types.CallToolResult:
        """``result`` unchanged unless it asks for a payment; then pay, ``retry`` with the
        given request ``_meta`` and return the paid result."""
        ...


class ToolScanner(Protocol):
    """The prompt-injection firewall for tool traffic (set by the firewall capability)."""

    async def check_arguments(self, principal: Principal, tool: str, arguments: Any) -> None:
        """Raise when the arguments carry an injection (the mode says block)."""
        ...

    async def check_result(self, principal: Principal, tool: str,
                           result: types.CallToolResult) -> None:
        """Raise when the tool's result carries an injection (indirect prompt injection)."""
        ...


class SessionCheck(Protocol):
    async def check_session(self, tenant: str, agent: str, session_id: str) -> object:
        """Raise (a 4xx KeelError) unless ``session_id`` is a session opened for ``agent``."""
        ...


class SessionSpend(Protocol):
    """Per-session spend in integer cents (:class:`keel.tools.spend.SqlSessionSpend` by
    default). ``spent_cents`` counts reservations in flight too."""

    async def spent_cents(self, tenant: str, session: str) -> int: ...

    async def reserve(self, tenant: str, session: str, cents: int, seen: int) -> bool:
        """Add ``cents`` (>= 0) as reserved, only if ``spent_cents`` is still ``seen`` (the
        value the decision was made on); False when it changed meanwhile."""
        ...

    async def commit(self, tenant: str, session: str, cents: int) -> None:
        """The reserved call succeeded: its reservation becomes spend."""
        ...

    async def release(self, tenant: str, session: str, cents: int) -> None:
        """The reserved call did not run or failed: drop its reservation."""
        ...


class MemorySessionSpend:
    """Per-process spend counters (integer cents), for tests and embedding; not durable.
    Never evicts a counter: forgetting one would reset a session's spend."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], int] = {}

    async def spent_cents(self, tenant: str, session: str) -> int:
        return self._spent.get((tenant, session), 0)

    async def reserve(self, tenant: str, session: str, cents: int, seen: int) -> bool:
        if self._spent.get((tenant, session), 0) != seen:
            return False
        self._spent[(tenant, session)] = seen + cents
        return True

    async def commit(self, tenant: str, session: str, cents: int) -> None:
        return None  # reserved and spent are one number here

    async def release(self, tenant: str, session: str, cents: int) -> None:
        self._spent[(tenant, session)] = self._spent.get((tenant, session), 0) - cents
