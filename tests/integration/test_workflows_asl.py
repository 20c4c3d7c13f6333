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


def test_cli_runs_the_refund_example(tmp_path: Path) -> None:
    env = {**os.environ, "KEEL_DATA_DIR": str(tmp_path / "data")}
    p = subprocess.run([KEEL, "workflows", "run", str(REFUND), "--input",
                        '{"order_id": "o-9", "amount": 30}'], env=env, cwd=tmp_path,
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    out = orjson.loads(p.stdout)
    assert out["status"] == "SUCCEEDED" and out["output"]["refund"]["refunded"] == 30
    bad = subprocess.run([KEEL, "workflows", "run", str(REFUND), "--input", "{oops"],
                         env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert bad.returncode == 1 and b"not valid JSON" in bad.stderr
