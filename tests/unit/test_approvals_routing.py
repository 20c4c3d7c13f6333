"""Risk routing: callers cannot route their own proposals past a human."""

from __future__ import annotations

import math
from typing import Any

import pytest

from keel.approvals.models import Proposal, Requester
from keel.approvals.routing import argument_amount, route
from keel.approvals.settings import ApprovalsSettings, RiskRule

AGENT = Requester(key_id="k1", agent="bot", ip="127.0.0.1")
ORCHESTRATOR = Requester(key_id="k2", agent=None, ip="127.0.0.1")


@pytest.mark.parametrize("args, amount", [
    ({"order_id": "o1", "amount": 50000}, 50000.0),
    ({"refund": {"amount_cents": 123456}}, 1234.56),
    ({"lines": [{"price": 10}, {"price": "2500.50"}]}, 2500.5),
    ({"payment": {"value_micros": 5_000_000}}, 5.0),
    ({"total_usd": -7000}, 7000.0),  # a negative amount is still that much money
    ({"amount": "lots"}, math.inf),  # unreadable: unbounded
    ({"order_id": "o1", "count": 99999}, None),
    # camelCase, currencies and money-named records (a review's ways past the amount rule)
    ({"amountCents": 5_000_000}, 50000.0),
    ({"amount_eur": 50000}, 50000.0),
    ({"totalPrice": 50000}, 50000.0),
    ({"refund": {"value": 50000}}, 50000.0),
    ({"grandTotal": "50000"}, 50000.0),
    ({"setting": {"value": 5}, "quantity": 3}, None),  # a bare "value" is not money
    # disguised names fail closed: a Cyrillic a, a zero-width space, fullwidth letters
    ({"\u0430mount": 50000}, 50000.0),
    ({"amount\u200b": 50000}, 50000.0),
    ({"\uff41\uff4d\uff4f\uff55\uff4e\uff54": 50000}, 50000.0),  # NFKC: "amount"
])
def test_money_fields_in_arguments(args: dict[str, Any], amount: float | None) -> None:
    assert argument_amount(args) == amount


def test_agent_requests_skip_auto_rules_unless_allowed() -> None:
    cfg = ApprovalsSettings()
    p = Proposal(action="execute_refund", arguments={"order_id": "o1"}, risk_level="low")
    assert route(p, cfg, AGENT).route == "require"
    assert route(p, cfg, ORCHESTRATOR).route == "auto"
    assert route(p, cfg).route == "auto"  # keel's own callers
    big = p.model_copy(update={"arguments": {"order_id": "o1", "amount": 50000}})
    assert route(big, cfg, ORCHESTRATOR).policy == "large-amount-waits"
    cfg.rules.append(RiskRule(name="agents-ok", route="auto", agent_requests=True))
    assert route(p, cfg, AGENT).policy == "agents-ok"
    assert route(big, cfg, AGENT).policy == "large-amount-waits"


def test_auto_default_route_does_not_apply_to_agents() -> None:
    cfg = ApprovalsSettings(rules=[], default_route="auto")
    p = Proposal(action="x", risk_level="HIGH")
    assert route(p, cfg, AGENT).route == "require"
    assert route(p, cfg, ORCHESTRATOR).route == "auto"
