"""The refund state machine (EvaluateRisk -> WaitForHumanApproval -> ExecuteAction /
AutoDeny) and other ASL features, run as DBOS workflows on real SQLite."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import make_settings
from keel.app import open_database
from keel.approvals.engine import Decider
from keel.approvals.handlers import HandlerContext
from keel.approvals.service import ApprovalsService
from keel.approvals.store import ListFilter
from keel.workflows.definition import load
from keel.workflows.interpreter import TaskFailed

REFUND = Path(__file__).resolve().parents[2] / "src/keel/workflows/examples/refund.asl.json"
KEEL = str(Path(sys.executable).with_name("keel"))


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ApprovalsService]:
    s = make_settings(tmp_path)
    s.approvals.polling_interval_s = 0.02
    db = open_database(s)
    svc = ApprovalsService(s, db)
    tokens: list[str] = []
    svc.registry.register("request_approval",
                          lambda p, ctx: tokens.append(ctx.task_token or ""))
    svc.tokens = tokens  # type: ignore[attr-defined]
    await svc.ensure_started()
    yield svc
    await svc.stop()
    db.dispose()


async def run(svc: ApprovalsService, defn: dict[str, Any], data: Any) -> Any:
    h = await svc.engine.run_asl(defn, data)
    return h


async def pending_one(svc: ApprovalsService) -> str:
    import asyncio

    for _ in range(300):
        rows = await svc.engine.list(ListFilter(status="pending"))
        if rows:
            return rows[0].id
        await asyncio.sleep(0.02)
    raise AssertionError("no approval became pending")


async def test_refund_low_risk_executes_directly(service: ApprovalsService) -> None:
    h = await run(service, load(REFUND), {"order_id": "o-1", "amount": 25})
    out = await h.get_result()
    assert out["status"] == "SUCCEEDED"
    assert out["states"] == ["EvaluateRisk", "RouteByRisk", "ExecuteAction"]
    assert out["output"]["refund"] == {"refunded": 25, "order_id": "o-1"}


async def test_refund_high_risk_waits_for_the_token_then_executes(
    service: ApprovalsService,
) -> None:
    h = await run(service, load(REFUND), {"order_id": "o-2", "amount": 5000})
    aid = await pending_one(service)
    tokens: list[str] = service.tokens  # type: ignore[attr-defined]
    assert len(tokens) == 1 and aid not in tokens[0]
    a = await service.engine.decide("approve", Decider("tester", "api"), ref=tokens[0])
    assert a.id == aid
    out = await h.get_result()
    assert out["status"] == "SUCCEEDED", out
    assert out["states"][-2:] == ["WaitForHumanApproval", "ExecuteAction"]
    assert out["output"]["approval"]["approved"] is True
    assert out["output"]["refund"]["refunded"] == 5000
    with pytest.raises(Exception, match="already used"):  # the token is one-time
        await service.engine.decide("deny", Decider("tester", "api"), ref=tokens[0])


async def test_refund_denied_takes_the_catch_branch(service: ApprovalsService) -> None:
    h = await run(service, load(REFUND), {"order_id": "o-3", "amount": 9000})
    aid = await pending_one(service)
    await service.engine.decide("deny", Decider("tester", "cli"), approval_id=aid)
    out = await h.get_result()
    assert out["states"][-2:] == ["Denied", "NotRefunded"]
    assert out["output"]["error"]["Error"] == "Approval.Denied"
    assert "refund" not in out["output"]


async def test_refund_timeout_auto_denies(service: ApprovalsService) -> None:
    defn = copy.deepcopy(load(REFUND))
    defn["States"]["WaitForHumanApproval"]["TimeoutSeconds"] = 1
    h = await run(service, defn, {"order_id": "o-4", "amount": 2000})
    out = await h.get_result()
    assert out["states"][-3:] == ["WaitForHumanApproval", "AutoDeny", "NotRefunded"]
    assert out["output"]["error"]["Error"] == "States.Timeout"
    assert out["output"]["outcome"]["status"] == "auto_denied"
    rows = await service.engine.list(ListFilter())
    assert rows[0].status == "timed_out"


async def test_retry_catch_pass_wait_fail(service: ApprovalsService) -> None:
    calls: list[int] = []

    def flaky(p: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
        calls.append(1)
        if len(calls) < 3:
            raise TaskFailed("Flaky.Busy", "try again")
        return {"n": len(calls)}

    def broken(p: dict[str, Any], ctx: HandlerContext) -> None:
        raise ValueError("no")

    service.registry.register("flaky", flaky)
    service.registry.register("broken", broken)
    defn = {"StartAt": "Prep", "States": {
        "Prep": {"Type": "Pass", "Parameters": {"x.$": "$.x", "fixed": 1}, "Next": "Nap"},
        "Nap": {"Type": "Wait", "Seconds": 0.2, "Next": "Flaky"},
        "Flaky": {"Type": "Task", "Resource": "flaky", "ResultPath": "$.flaky",
                  "Retry": [{"ErrorEquals": ["Flaky.Busy"], "IntervalSeconds": 0.05,
                             "MaxAttempts": 3}], "Next": "Broken"},
        "Broken": {"Type": "Task", "Resource": "arn:aws:lambda:eu:1:function:broken",
                   "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.err",
                              "Next": "Check"}], "End": True},
        "Check": {"Type": "Choice", "Choices": [
            {"And": [{"Variable": "$.flaky.n", "NumericGreaterThanEquals": 3},
                     {"Variable": "$.err.Error", "StringEquals": "ValueError"}],
             "Next": "Boom"}], "Default": "Fine"},
        "Fine": {"Type": "Succeed"},
        "Boom": {"Type": "Fail", "Error": "Expected", "Cause": "reached Fail"},
    }}
    out = await (await run(service, defn, {"x": 7})).get_result()
    assert len(calls) == 3
    assert out == {"status": "FAILED", "error": "Expected", "cause": "reached Fail",
                   "states": ["Prep", "Nap", "Flaky", "Broken", "Check", "Boom"]}


async def test_task_timeout_is_states_timeout(service: ApprovalsService) -> None:
    import asyncio

    async def slow(p: dict[str, Any], ctx: HandlerContext) -> None:
        await asyncio.sleep(5)

    service.registry.register("slow", slow)
    defn = {"StartAt": "Slow", "States": {
        "Slow": {"Type": "Task", "Resource": "slow", "TimeoutSeconds": 0.2, "End": True}}}
    out = await (await run(service, defn, {})).get_result()
    assert out["status"] == "FAILED" and out["error"] == "States.Timeout"


def test_cli_local_runs_the_refund_example(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path / "data"),
           "KEEL_URL": "http://127.0.0.1:9"}
    gone = subprocess.run([KEEL, "workflows", "run", str(REFUND)], env=env, cwd=tmp_path,
                          capture_output=True, timeout=120)
    assert gone.returncode == 1 and b"--local" in gone.stderr  # no gateway: says what to do
    p = subprocess.run([KEEL, "workflows", "run", "--local", str(REFUND), "--input",
                        '{"order_id": "o-9", "amount": 30}'], env=env, cwd=tmp_path,
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    out = orjson.loads(p.stdout)
    assert out["status"] == "SUCCEEDED" and out["output"]["refund"]["refunded"] == 30
    bad = subprocess.run([KEEL, "workflows", "run", "--local", str(REFUND), "--input", "{oops"],
                         env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert bad.returncode == 1 and b"not valid JSON" in bad.stderr


# -- Step Functions semantics ------------------------------------------------------------

# The reference article's refund machine: Choice on $.risk_level, a human for HIGH.
REFERENCE = {
    "StartAt": "CheckRisk",
    "States": {
        "CheckRisk": {"Type": "Choice", "Choices": [
            {"Variable": "$.risk_level", "StringEquals": "HIGH",
             "Next": "WaitForHumanApproval"}], "Default": "ExecuteRefund"},
        "WaitForHumanApproval": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {"FunctionName": "request_approval",
                           "Payload": {"token.$": "$$.Task.Token", "order.$": "$"}},
            "TimeoutSeconds": 172800, "ResultPath": "$.approval",
            "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error",
                       "Next": "Rejected"}],
            "Next": "ExecuteRefund"},
        "ExecuteRefund": {"Type": "Task",
                          "Resource": "arn:aws:lambda:us-east-1:123456789012:function:"
                                      "execute_refund", "End": True},
        "Rejected": {"Type": "Fail", "Error": "Rejected"},
    },
}


async def test_choice_on_a_missing_field_fails_closed(service: ApprovalsService) -> None:
    refunds: list[Any] = []
    service.registry.register("execute_refund", lambda p, ctx: refunds.append(p))
    out = await (await run(service, REFERENCE, {"order_id": "o-7", "amount": 5000}
                           )).get_result()
    assert out["status"] == "FAILED" and out["error"] == "States.Runtime"
    assert "risk_level" in out["cause"] and refunds == []  # the refund never ran
    ok = await (await run(service, REFERENCE, {"amount": 5, "risk_level": "LOW"})).get_result()
    assert ok["status"] == "SUCCEEDED" and refunds == [{"amount": 5, "risk_level": "LOW"}]


async def test_runtime_errors_are_not_caught_by_states_all(service: ApprovalsService) -> None:
    defn = {"StartAt": "T", "States": {
        "T": {"Type": "Pass", "Parameters": {"x.$": "$.nope"}, "End": True}}}
    defn["States"]["T"]["Type"] = "Task"
    defn["States"]["T"]["Resource"] = "echo"
    defn["States"]["T"]["Catch"] = [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]
    defn["States"]["Caught"] = {"Type": "Succeed"}
    service.registry.register("echo", lambda p, ctx: p)
    out = await (await run(service, defn, {})).get_result()
    assert out["status"] == "FAILED" and out["error"] == "States.Runtime"


async def test_lambda_invoke_payload_and_envelope(service: ApprovalsService) -> None:
    seen: list[Any] = []

    def price(p: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
        seen.append(p)
        return {"total": p["qty"] * 3}

    service.registry.register("price", price)
    defn = {"StartAt": "Price", "States": {"Price": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": {"FunctionName": "arn:aws:lambda:eu-west-1:1:function:price",
                       "Payload.$": "$.order"},
        "ResultSelector": {"r.$": "$.Payload", "code.$": "$.StatusCode"},
        "ResultPath": "$.priced", "End": True}}}
    out = await (await run(service, defn, {"order": {"qty": 2}, "other": 1})).get_result()
    assert seen == [{"qty": 2}]  # the handler got $.order, not the whole input
    assert out["output"] == {"order": {"qty": 2}, "other": 1,
                             "priced": {"r": {"total": 6}, "code": 200}}


async def test_approve_carries_output_deny_carries_error_and_note(
    service: ApprovalsService,
) -> None:
    refunds: list[Any] = []
    service.registry.register("execute_refund", lambda p, ctx: refunds.append(p) or "done")
    h = await run(service, REFERENCE, {"amount": 5000, "risk_level": "HIGH"})
    aid = await pending_one(service)
    tokens: list[str] = service.tokens  # type: ignore[attr-defined]
    await service.engine.decide("approve", Decider("ann", "api"), ref=tokens[-1],
                                output={"approved_amount": 4000})
    out = await h.get_result()
    assert out["status"] == "SUCCEEDED", out
    assert refunds[0]["approval"] == {"approved_amount": 4000}
    h2 = await run(service, REFERENCE, {"amount": 7000, "risk_level": "HIGH"})
    for _ in range(300):
        rows = [a for a in await service.engine.list(ListFilter(status="pending"))
                if a.id != aid]
        if rows:
            break
        import asyncio

        await asyncio.sleep(0.02)
    await service.engine.decide("deny", Decider("bob", "api"), approval_id=rows[0].id,
                                note="customer already refunded", error="HumanDenied")
    out2 = await h2.get_result()
    assert out2["status"] == "FAILED" and out2["error"] == "Rejected"
    assert len(refunds) == 1
    with pytest.raises(Exception, match="output goes with approve"):
        await service.engine.decide("deny", Decider("bob", "api"), approval_id=aid,
                                    output={"x": 1})


async def test_denial_error_and_cause_reach_the_catch(service: ApprovalsService) -> None:
    defn = copy.deepcopy(REFERENCE)
    defn["States"]["Rejected"] = {"Type": "Pass", "End": True}
    h = await run(service, defn, {"amount": 1, "risk_level": "HIGH"})
    aid = await pending_one(service)
    await service.engine.decide("deny", Decider("bob", "api"), approval_id=aid,
                                note="looks like fraud", error="HumanDenied")
    out = await h.get_result()
    assert out["output"]["error"] == {"Error": "HumanDenied", "Cause": "looks like fraud"}


async def test_intrinsics_in_a_run_and_intrinsic_failure_is_catchable(
    service: ApprovalsService,
) -> None:
    defn = {"StartAt": "Build", "States": {
        "Build": {"Type": "Pass", "Parameters": {
            "greeting.$": "States.Format('Hi {}, you have {} items', $.name, "
                          "States.ArrayLength($.items))",
            "id.$": "States.UUID()", "next.$": "States.MathAdd($.n, 1)",
            "cfg.$": "States.StringToJson($.cfg)"}, "ResultPath": "$.built",
                  "Next": "Bad"},
        "Bad": {"Type": "Task", "Resource": "echo",
                "Parameters": {"x.$": "States.StringToJson($.name)"},
                "Catch": [{"ErrorEquals": ["States.IntrinsicFailure"], "ResultPath": "$.err",
                           "Next": "Done"}], "End": True},
        "Done": {"Type": "Succeed"}}}
    service.registry.register("echo", lambda p, ctx: p)
    out = await (await run(service, defn, {"name": "Ada", "items": [1, 2], "n": 41,
                                           "cfg": '{"k": true}'})).get_result()
    assert out["status"] == "SUCCEEDED", out
    built = out["output"]["built"]
    assert built["greeting"] == "Hi Ada, you have 2 items" and built["next"] == 42
    assert built["cfg"] == {"k": True} and len(built["id"]) == 36
    assert out["output"]["err"]["Error"] == "States.IntrinsicFailure"


async def test_execution_timeout_seconds(service: ApprovalsService) -> None:
    import time as _t

    defn = {"TimeoutSeconds": 1, "StartAt": "Nap", "States": {
        "Nap": {"Type": "Wait", "Seconds": 30, "End": True}}}
    t0 = _t.monotonic()
    out = await (await run(service, defn, {})).get_result()
    assert out["status"] == "TIMED_OUT" and out["error"] == "States.Timeout"
    assert _t.monotonic() - t0 < 10


async def test_heartbeat_timeout_on_a_token_task(service: ApprovalsService) -> None:
    defn = copy.deepcopy(REFERENCE)
    defn["States"]["WaitForHumanApproval"]["HeartbeatSeconds"] = 1
    defn["States"]["WaitForHumanApproval"]["Catch"] = [
        {"ErrorEquals": ["States.HeartbeatTimeout"], "ResultPath": "$.error",
         "Next": "Rejected"}]
    defn["States"]["Rejected"] = {"Type": "Pass", "End": True}
    out = await (await run(service, defn, {"risk_level": "HIGH"})).get_result()
    assert out["output"]["error"]["Error"] == "States.HeartbeatTimeout"


async def test_map_with_max_concurrency_and_parallel(service: ApprovalsService) -> None:
    import asyncio

    active, peak = [0], [0]

    async def work(p: dict[str, Any], ctx: HandlerContext) -> int:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        await asyncio.sleep(0.1)
        active[0] -= 1
        return int(p["v"]) * 10 + int(p["i"])

    service.registry.register("work", work)
    defn = {"StartAt": "Fan", "States": {
        "Fan": {"Type": "Parallel", "ResultPath": "$.both", "Next": "Each", "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": "a", "End": True}}},
            {"StartAt": "B", "States": {"B": {"Type": "Pass", "InputPath": "$.items",
                                              "End": True}}}]},
        "Each": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2,
                 "ItemSelector": {"v.$": "$$.Map.Item.Value", "i.$": "$$.Map.Item.Index"},
                 "ItemProcessor": {"StartAt": "W", "States": {
                     "W": {"Type": "Task", "Resource": "work", "End": True}}},
                 "ResultPath": "$.mapped", "End": True}}}
    out = await (await run(service, defn, {"items": [1, 2, 3, 4, 5]})).get_result()
    assert out["status"] == "SUCCEEDED", out
    assert out["output"]["both"] == ["a", [1, 2, 3, 4, 5]]
    assert out["output"]["mapped"] == [10, 21, 32, 43, 54]
    assert peak[0] == 2  # MaxConcurrency held


async def test_map_item_failure_fails_the_map_and_is_caught(service: ApprovalsService) -> None:
    def picky(p: Any, ctx: HandlerContext) -> Any:
        if p == 3:
            raise TaskFailed("Picky.Three", "no threes")
        return p

    service.registry.register("picky", picky)
    defn = {"StartAt": "Each", "States": {
        "Each": {"Type": "Map", "ItemProcessor": {"StartAt": "P", "States": {
            "P": {"Type": "Task", "Resource": "picky", "End": True}}},
                 "Catch": [{"ErrorEquals": ["Picky.Three"], "Next": "Handled"}],
                 "End": True},
        "Handled": {"Type": "Succeed"}}}
    out = await (await run(service, defn, [1, 2, 3])).get_result()
    assert out["status"] == "SUCCEEDED" and out["output"]["Error"] == "Picky.Three"


async def test_spec_example_input_result_output_paths(service: ApprovalsService) -> None:
    """The Step Functions guide's InputPath / ResultPath / OutputPath example."""
    service.registry.register("hello", lambda p, ctx: f"Hello, {p['who']}!")
    defn = {"StartAt": "Hello", "States": {"Hello": {
        "Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:hello",
        "InputPath": "$.lambda", "ResultPath": "$.data.lambdaresult", "OutputPath": "$.data",
        "End": True}}}
    data = {"comment": "An input comment.", "data": {"val1": 23, "val2": 17},
            "extra": "foo", "lambda": {"who": "AWS Step Functions"}}
    out = await (await run(service, defn, data)).get_result()
    assert out["output"] == {"val1": 23, "val2": 17,
                             "lambdaresult": "Hello, AWS Step Functions!"}
    discard = copy.deepcopy(defn)
    discard["States"]["Hello"].update(ResultPath=None, OutputPath="$")
    out = await (await run(service, discard, data)).get_result()
    assert out["output"] == data  # ResultPath null: the input passes through


def test_cli_errors_keep_square_brackets(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path / "data")}
    bad = tmp_path / "bad.asl.json"
    bad.write_text('{"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "nope", '
                   '"End": true}}}')
    p = subprocess.run([KEEL, "workflows", "run", "--local", str(bad)], env=env,
                       cwd=tmp_path, capture_output=True, timeout=120)
    assert p.returncode == 1 and b"[approvals] handler_modules" in p.stderr.replace(b"\n", b" ")
