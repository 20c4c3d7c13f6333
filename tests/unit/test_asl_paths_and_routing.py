"""Pure logic: ASL paths and choice rules, definition checks, risk routing, Slack signing."""

from __future__ import annotations

import time

import pytest

from keel.approvals import slack
from keel.approvals.models import Proposal
from keel.approvals.routing import route
from keel.approvals.settings import ApprovalsSettings, RiskRule
from keel.errors import InvalidRequest, InvalidSignature
from keel.workflows import choice, paths
from keel.workflows.definition import check
from keel.workflows.resources import resolve_resource


def handler_name(state: dict[str, object]) -> str:
    return resolve_resource(state).target


def test_paths_get_put_parameters() -> None:
    data = {"a": {"b": [1, {"c": "x"}]}, "n": 3}
    assert paths.resolve("$.a.b[1].c", data) == "x"
    assert paths.get("$.nope", data) is paths.MISSING
    with pytest.raises(paths.PathError):
        paths.resolve("$.a.zz", data)
    assert paths.put("$.r.s", data, 5)["r"] == {"s": 5} and "r" not in data
    assert paths.put(None, data, 5) is data and paths.put("$", data, 5) == 5
    got = paths.parameters({"v.$": "$.n", "t.$": "$$.Task.Token", "k": {"w.$": "$.a.b[0]"}},
                           data, {"Task": {"Token": "tok"}})
    assert got == {"v": 3, "t": "tok", "k": {"w": 1}}
    with pytest.raises(InvalidRequest):
        paths.resolve("$..deep", data)


def test_choice_rules() -> None:
    d = {"level": "HIGH", "amount": 1200, "flag": True, "none": None}
    assert choice.evaluate({"Variable": "$.level", "StringEquals": "HIGH"}, d)
    assert choice.evaluate({"Variable": "$.amount", "NumericGreaterThanEquals": 1000}, d)
    assert not choice.evaluate({"Variable": "$.level", "NumericEquals": 1}, d)
    assert choice.evaluate({"Not": {"Variable": "$.flag", "BooleanEquals": False}}, d)
    assert choice.evaluate({"Or": [{"Variable": "$.x", "IsPresent": True},
                                   {"Variable": "$.none", "IsNull": True}]}, d)
    assert choice.evaluate({"Variable": "$.level", "StringMatches": "HI*"}, d)
    assert choice.evaluate({"Variable": "$.amount", "NumericEqualsPath": "$.amount"}, d)
    with pytest.raises(paths.PathError, match="IsPresent"):  # fails closed, not Default
        choice.evaluate({"Variable": "$.missing", "StringEquals": "x"}, d)


def test_definition_checks_and_resources() -> None:
    with pytest.raises(InvalidRequest, match="StartAt"):
        check({"StartAt": "X", "States": {}})
    with pytest.raises(InvalidRequest, match="ItemProcessor"):
        check({"StartAt": "M", "States": {"M": {"Type": "Map", "End": True}}})
    with pytest.raises(InvalidRequest, match="transition to 'Nope'"):
        check({"StartAt": "P", "States": {"P": {"Type": "Pass", "Next": "Nope"}}})
    assert handler_name({"Resource": "arn:aws:lambda:us-east-1:1:function:fn:live"}) == "fn"
    assert handler_name({"Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
                         "Parameters": {"FunctionName": "ask"}}) == "ask"
    assert handler_name({"Resource": "keel:local"}) == "local"


def test_risk_routing_first_match_wins() -> None:
    s = ApprovalsSettings()
    assert route(Proposal(action="a", risk_level="high"), s).route == "require"
    assert route(Proposal(action="a", risk_level="LOW", amount=5000), s).policy == \
        "large-amount-waits"
    assert route(Proposal(action="a", risk_level="LOW", amount=5), s).route == "auto"
    s.rules = [RiskRule(name="no-deletes", route="deny", actions=["delete_*"])]
    assert route(Proposal(action="delete_db"), s).route == "deny"
    assert route(Proposal(action="read"), s).policy == "default"


def test_slack_signature_window() -> None:
    body, now = b"payload=x", int(time.time())
    sig = slack.signature("s", str(now), body)
    slack.verify("s", str(now), sig, body)
    with pytest.raises(InvalidSignature, match="stale"):
        slack.verify("s", str(now - 301), slack.signature("s", str(now - 301), body), body)
    with pytest.raises(InvalidSignature):
        slack.verify("s", str(now), sig, body + b"!")
    with pytest.raises(InvalidSignature):
        slack.verify("s", None, sig, body)
