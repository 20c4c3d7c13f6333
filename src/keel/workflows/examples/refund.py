"""Handlers of the refund example (``refund.asl.json``), registered by default."""

from __future__ import annotations

import sys
from typing import Any

from keel.approvals.handlers import HandlerContext, HandlerRegistry

HIGH_RISK_AMOUNT = 1000.0


def evaluate_risk(payload: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    amount = float(payload.get("amount", 0))
    if amount >= HIGH_RISK_AMOUNT:
        return {"level": "HIGH", "reason": f"refund of {amount:,.2f} is at least "
                                           f"{HIGH_RISK_AMOUNT:,.0f}"}
    return {"level": "LOW", "reason": "small refund"}


def request_approval(payload: dict[str, Any], ctx: HandlerContext) -> None:
    """The ``.waitForTaskToken`` handler: tell a human where to decide. The token is a
    one-time reference; ``ctx.decision_url`` is the confirmation page for it."""
    print(f"refund {payload.get('order_id')} of {payload.get('amount')} needs approval "
          f"({ctx.approval_id}): open {ctx.decision_url} or run "
          f"`keel approvals approve {ctx.approval_id}`", file=sys.stderr, flush=True)


def execute_refund(payload: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
    return {"refunded": payload.get("amount"), "order_id": payload.get("order_id")}


def register(registry: HandlerRegistry) -> None:
    registry.register("evaluate_risk", evaluate_risk)
    registry.register("request_approval", request_approval)
    registry.register("execute_refund", execute_refund)
