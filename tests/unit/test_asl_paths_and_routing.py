"""Pure logic: ASL paths and choice rules, definition checks, risk routing, Slack signing."""

from __future__ import annotations

import time

import pytest

from keel.approvals import slack
from keel.approvals.models import Proposal
from keel.approvals.routing import route
from keel.approvals.settings import ApprovalsSettings, RiskRule
from keel.errors import InvalidRequest, InvalidSignature
from keel.workflows import choice, intrinsics, paths
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


def _m(states: dict[str, object], start: str = "A") -> dict[str, object]:
    return {"StartAt": start, "States": states}


def test_definitions_are_validated_at_load() -> None:
    with pytest.raises(InvalidRequest, match=r"'Orphan'.*cannot be reached"):
        check(_m({"A": {"Type": "Succeed"}, "Orphan": {"Type": "Succeed"}}))
    with pytest.raises(InvalidRequest, match="loop forever"):
        check(_m({"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Pass", "Next": "A"}}))
    loop_with_exit = _m({"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Choice",
                        "Choices": [{"Variable": "$.done", "BooleanEquals": True,
                                     "Next": "End"}], "Default": "A"},
                         "End": {"Type": "Succeed"}})
    check(loop_with_exit)
    with pytest.raises(InvalidRequest, match="unsupported JSONPath"):
        check(_m({"A": {"Type": "Pass", "InputPath": "$..x", "End": True}}))
    with pytest.raises(InvalidRequest, match=r"unknown intrinsic function States\.Nope"):
        check(_m({"A": {"Type": "Pass", "Parameters": {"x.$": "States.Nope(1)"},
                        "End": True}}))
    with pytest.raises(InvalidRequest, match=r"States\.ALL must appear alone"):
        check(_m({"A": {"Type": "Task", "Resource": "f", "End": True, "Retry": [
            {"ErrorEquals": ["States.ALL", "X"]}]}}))
    task = _m({"A": {"Type": "Task", "Resource": "arn:aws:lambda:eu:1:function:gone",
                     "End": True}})
    with pytest.raises(InvalidRequest, match="no handler 'gone'"):
        check(task, lambda kind, target: f"no handler {target!r}")
    with pytest.raises(InvalidRequest, match=r"Branches\[0\].*cannot be reached"):
        check(_m({"A": {"Type": "Parallel", "End": True, "Branches": [
            _m({"A": {"Type": "Succeed"}, "B": {"Type": "Succeed"}})]}}))


def test_intrinsic_functions_as_in_the_spec() -> None:
    data = {"name": "Ada", "n": 3, "json": '{"a": [1, 2]}', "items": [1, 2, 2, 3]}
    ev = lambda s: intrinsics.evaluate(s, data, {})  # noqa: E731
    assert ev("States.Format('Hello, my name is {}.', $.name)") == "Hello, my name is Ada."
    assert ev("States.Format('\\{literal\\} {} {}', $.n, true)") == "{literal} 3 true"
    assert ev("States.StringToJson($.json)") == {"a": [1, 2]}
    assert ev("States.JsonToString(States.StringToJson($.json))") == '{"a":[1,2]}'
    assert ev("States.Array('a', $.n, States.MathAdd($.n, -1))") == ["a", 3, 2]
    assert ev("States.ArrayPartition($.items, 3)") == [[1, 2, 2], [3]]
    assert ev("States.ArrayRange(1, 9, 4)") == [1, 5, 9]
    assert ev("States.ArrayUnique($.items)") == [1, 2, 3]
    assert ev("States.ArrayLength($.items)") == 4
    assert ev("States.ArrayGetItem($.items, 3)") == 3
    assert ev("States.ArrayContains($.items, 2)") is True
    assert ev("States.Base64Decode(States.Base64Encode('Data to encode'))") == "Data to encode"
    assert ev("States.Hash('input data', 'SHA-1')") == \
        "aaff4a450a104cd177d28d18d74485e8cae074b7"
    assert ev("States.StringSplit('1,2,3', ',')") == ["1", "2", "3"]
    assert ev("States.JsonMerge(States.StringToJson($.json), States.StringToJson($.json), "
              "false)") == {"a": [1, 2]}
    import random

    a = intrinsics.evaluate("States.UUID()", data, {}, random.Random("x"))
    assert a == intrinsics.evaluate("States.UUID()", data, {}, random.Random("x"))
    assert len(a) == 36 and a[14] == "4"  # a v4 UUID, the same on replay
    assert 1 <= ev("States.MathRandom(1, 3)") <= 3
    for bad in ("States.StringToJson('{oops')", "States.MathAdd('a', 1)",
                "States.ArrayGetItem($.items, 9)", "States.Format('{}')",
                "States.StringToJson($.missing)"):
        with pytest.raises(intrinsics.IntrinsicFailure):
            ev(bad)


def test_result_path_writes_into_the_raw_input() -> None:
    assert paths.put("$.r", {"a": 1}, 2) == {"a": 1, "r": 2}
    with pytest.raises(paths.PathError):
        paths.put("$.a.b", {"a": 1}, 2)  # a is not an object
    with pytest.raises(paths.PathError):
        paths.put("$.r", [1], 2)
