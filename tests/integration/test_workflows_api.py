"""Workflows as a gateway service: register, StartExecution, describe, history, stop, limits,
and Cedar deciding which workflows an agent key may start (real SQLite, DBOS, Cedar)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from keel.approvals.service import ApprovalsService
from keel.config import Settings
from keel.gateway.services import Services

REFUND = Path(__file__).resolve().parents[2] / "src/keel/workflows/examples/refund.asl.json"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.tools.enabled = False
    settings.approvals.polling_interval_s = 0.02
    settings.workflows.agent_policy = (
        'permit(principal == Agent::"bot-1", action == Action::"StartExecution", '
        'resource == Workflow::"refund");')
    return settings


def H(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def finished(client: httpx.AsyncClient, key: str, eid: str) -> dict[str, Any]:
    for _ in range(500):
        ex: dict[str, Any] = (await client.get(f"/v1/executions/{eid}", headers=H(key))).json()
        if ex["status"] != "RUNNING":
            return ex
        await asyncio.sleep(0.02)
    raise AssertionError(f"execution {eid} did not finish: {ex}")


async def test_register_start_describe_history(
    client: httpx.AsyncClient, admin_key: str, user_key: str,
) -> None:
    r = await client.put("/v1/workflows/refund", content=REFUND.read_bytes(),
                         headers=H(user_key))
    assert r.status_code == 403  # registering needs an admin key
    r = await client.put("/v1/workflows/refund", content=REFUND.read_bytes(),
                         headers=H(admin_key))
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    again = await client.put("/v1/workflows/refund", content=REFUND.read_bytes(),
                             headers=H(admin_key))
    assert again.json()["version"] == 1  # unchanged: same version
    r = await client.post("/v1/workflows/refund/executions",
                          json={"input": {"order_id": "o-1", "amount": 20}},
                          headers=H(user_key))  # bot-1 is permitted by the policy
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    assert r.headers["location"] == f"/v1/executions/{eid}"
    ex = await finished(client, user_key, eid)
    assert ex["status"] == "SUCCEEDED" and ex["output"]["refund"]["refunded"] == 20
    assert ex["workflow"] == "refund" and ex["version"] == 1
    hist = (await client.get(f"/v1/executions/{eid}/history", headers=H(user_key))).json()
    types = [e["type"] for e in hist["data"]]
    assert types[0] == "ExecutionStarted" and types[-1] == "ExecutionSucceeded"
    assert "TaskScheduled" in types and "ChoiceStateEntered" in types
    listed = (await client.get("/v1/executions?workflow=refund", headers=H(admin_key))).json()
    assert [e["id"] for e in listed["data"]] == [eid]


async def test_bad_input_is_a_clear_4xx_and_starts_nothing(
    client: httpx.AsyncClient, admin_key: str,
) -> None:
    r = await client.post("/v1/workflows/nope/executions", json={"input": {}},
                          headers=H(admin_key))
    assert r.status_code == 404 and "PUT /v1/workflows" in r.json()["error"]["message"]
    loop = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "A"}}}
    r = await client.put("/v1/workflows/loop", json=loop, headers=H(admin_key))
    assert r.status_code == 400 and "loop forever" in r.json()["error"]["message"]
    missing = {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "no_such_fn",
                                                "End": True}}}
    r = await client.put("/v1/workflows/missing", json=missing, headers=H(admin_key))
    assert r.status_code == 400 and "no_such_fn" in r.json()["error"]["message"]
    r = await client.put("/v1/workflows/refund", content=REFUND.read_bytes(),
                         headers=H(admin_key))
    big = {"input": {"blob": "x" * (300 * 1024)}}
    r = await client.post("/v1/workflows/refund/executions", content=orjson.dumps(big),
                          headers=H(admin_key))
    assert r.status_code == 413 and "reference" in r.json()["error"]["message"]
    r = await client.post("/v1/workflows/refund/executions", json={"inptu": {}},
                          headers=H(admin_key))
    assert r.status_code == 400 and "inptu" in r.json()["error"]["message"]
    listed = (await client.get("/v1/executions", headers=H(admin_key))).json()
    assert listed["data"] == []  # nothing started


async def test_agents_start_only_workflows_a_policy_allows(
    client: httpx.AsyncClient, admin_key: str, services: Services,
) -> None:
    other = services.keys.create("acme", agent="bot-2").secret
    for name in ("refund", "other"):
        r = await client.put(f"/v1/workflows/{name}", content=REFUND.read_bytes(),
                             headers=H(admin_key))
        assert r.status_code == 200
    r = await client.post("/v1/workflows/refund/executions", json={"input": {}},
                          headers=H(other))
    assert r.status_code == 403 and "bot-2" in r.json()["error"]["message"]
    bot1 = services.keys.create("acme", agent="bot-1").secret
    r = await client.post("/v1/workflows/other/executions", json={"input": {}},
                          headers=H(bot1))
    assert r.status_code == 403
    listed = (await client.get("/v1/executions", headers=H(admin_key))).json()
    assert listed["data"] == []


async def test_stop_aborts_a_waiting_execution(
    client: httpx.AsyncClient, admin_key: str, user_key: str,
) -> None:
    await client.put("/v1/workflows/refund", content=REFUND.read_bytes(),
                     headers=H(admin_key))
    r = await client.post("/v1/workflows/refund/executions",
                          json={"input": {"order_id": "o-2", "amount": 5000}},
                          headers=H(admin_key))
    eid = r.json()["id"]
    for _ in range(300):
        a = (await client.get("/v1/approvals?status=pending", headers=H(admin_key))).json()
        if a["data"]:
            break
        await asyncio.sleep(0.02)
    mine = (await client.get("/v1/approvals?status=pending", headers=H(user_key))).json()
    assert len(mine["data"]) == 1  # the task's approval is in the execution's tenant
    r = await client.post(f"/v1/executions/{eid}/stop", json={"cause": "customer cancelled"},
                          headers=H(admin_key))
    assert r.status_code == 200 and r.json()["status"] == "ABORTED", r.text
    assert r.json()["cause"] == "customer cancelled"
    hist = (await client.get(f"/v1/executions/{eid}/history", headers=H(admin_key))).json()
    assert hist["data"][-1]["type"] == "ExecutionAborted"
    left = (await client.get("/v1/approvals?status=pending", headers=H(admin_key))).json()
    assert left["data"] == []  # the approval it waited for is closed, not left dangling


async def test_console_lists_executions_and_history(
    client: httpx.AsyncClient, admin_key: str,
) -> None:
    from urllib.parse import urlencode

    await client.put("/v1/workflows/refund", content=REFUND.read_bytes(),
                     headers=H(admin_key))
    r = await client.post("/v1/workflows/refund/executions",
                          json={"input": {"order_id": "o-<b>", "amount": 3}},
                          headers=H(admin_key))
    eid = r.json()["id"]
    await finished(client, admin_key, eid)
    login = await client.post("/console/login", content=urlencode({"api_key": admin_key}),
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert login.status_code == 303
    page = await client.get("/console/workflows")
    assert page.status_code == 200 and eid in page.text and "SUCCEEDED" in page.text
    detail = await client.get(f"/console/workflows?execution={eid}")
    assert "ExecutionSucceeded" in detail.text and "TaskScheduled" in detail.text
    assert "o-<b>" not in detail.text  # user data is escaped


async def test_definitions_from_files_named_in_keel_toml(settings: Settings,
                                                        tmp_path: Path) -> None:
    from keel.app import build_services, create_app
    from keel.errors import InvalidRequest

    settings.workflows.files = {"refund": REFUND}
    svc = build_services(settings)
    admin = svc.keys.create("acme", admin=True).secret
    app = create_app(settings, services=svc)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        listed = (await c.get("/v1/workflows", headers=H(admin))).json()
        assert [w["name"] for w in listed["data"]] == ["refund"]
    bad = tmp_path / "bad.asl.json"
    bad.write_text('{"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "A"}}}')
    settings.workflows.files = {"bad": bad}
    svc = build_services(settings)
    app = create_app(settings, services=svc)
    with pytest.raises(InvalidRequest, match=r"files.bad .*loop forever"):
        async with app.router.lifespan_context(app):
            pass


async def test_send_task_success_and_failure_by_token(
    client: httpx.AsyncClient, admin_key: str, user_key: str, services: Services,
) -> None:
    tokens: list[str] = []
    services.get(ApprovalsService).registry.register(
        "callback", lambda p, ctx: tokens.append(p["token"]))
    defn = {"StartAt": "Wait", "States": {"Wait": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
        "Parameters": {"FunctionName": "callback", "Payload": {"token.$": "$$.Task.Token"}},
        "ResultPath": "$.cb", "End": True}}}
    r = await client.put("/v1/workflows/cb", json=defn, headers=H(admin_key))
    assert r.status_code == 200, r.text
    ids = []
    for _ in range(2):
        r = await client.post("/v1/workflows/cb/executions", json={"input": {"k": 1}},
                              headers=H(admin_key))
        ids.append(r.json()["id"])
        for _ in range(300):
            if len(tokens) == len(ids):
                break
            await asyncio.sleep(0.02)
    r = await client.post("/v1/tasks/success", json={"taskToken": tokens[0],
                                                     "output": {"shipped": True}},
                          headers=H(user_key))
    assert r.status_code == 200, r.text
    ok = await finished(client, admin_key, ids[0])
    assert ok["status"] == "SUCCEEDED" and ok["output"] == {"k": 1, "cb": {"shipped": True}}
    r = await client.post("/v1/tasks/failure", json={"taskToken": tokens[1],
                                                     "error": "Partner.Down",
                                                     "cause": "503 from the partner"},
                          headers=H(user_key))
    assert r.status_code == 200, r.text
    bad = await finished(client, admin_key, ids[1])
    assert (bad["status"], bad["error"], bad["cause"]) == (
        "FAILED", "Partner.Down", "503 from the partner")
    again = await client.post("/v1/tasks/success", json={"taskToken": tokens[0]},
                              headers=H(user_key))
    assert again.status_code >= 400 and "already used" in again.json()["error"]["message"]
    r = await client.post("/v1/tasks/success", json={"taskToken": "forged"},
                          headers=H(user_key))
    assert r.status_code == 404
