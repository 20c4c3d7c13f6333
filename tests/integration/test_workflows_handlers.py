"""Task handlers beyond Python callables: an HTTP endpoint (a real server on 127.0.0.1)
and a registered MCP tool through the tool gateway, where Cedar decides as for any call."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.config import Settings
from keel.gateway.services import Services
from keel.tools.gateway import ToolGateway

SERVER = str(Path(__file__).resolve().parents[1] / "tool_servers" / "crm_mcp.py")
POLICY = """
permit(principal, action == Action::"issue_refund", resource)
when { principal.roles.contains("support") };
forbid(principal, action == Action::"issue_refund", resource)
when { context.amount_cents > 5000 };
"""


class _Echo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
        status = 503 if body.get("fail") else 200
        out = orjson.dumps({"got": body, "doubled": body.get("n", 0) * 2})
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, tools={
        "servers": [{"name": "crm", "command": [sys.executable, SERVER]}],
        "policy": {"roles": {"acme/support-bot": ["support"]}, "reload_s": 0}},
        firewall={"enabled": False})
    s.approvals.polling_interval_s = 0.02
    s.workflows.agent_policy = ('permit(principal, action == Action::"StartExecution", '
                                'resource);')
    return s


def H(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def finished(c: httpx.AsyncClient, key: str, eid: str) -> dict[str, Any]:
    for _ in range(500):
        ex: dict[str, Any] = (await c.get(f"/v1/executions/{eid}", headers=H(key))).json()
        if ex["status"] != "RUNNING":
            return ex
        await asyncio.sleep(0.02)
    raise AssertionError(ex)


async def start(c: httpx.AsyncClient, key: str, name: str, data: Any) -> dict[str, Any]:
    r = await c.post(f"/v1/workflows/{name}/executions", json={"input": data}, headers=H(key))
    assert r.status_code == 201, r.text
    return await finished(c, key, r.json()["id"])


async def test_http_and_tool_handlers(settings: Settings, endpoint: str) -> None:
    svc: Services = build_services(settings)
    admin = svc.keys.create("acme", admin=True).secret
    bot = svc.keys.create("acme", agent="support-bot").secret
    app = create_app(settings, services=svc)
    async with app.router.lifespan_context(app):
        svc.get(ToolGateway).store.apply(POLICY, validate=svc.get(ToolGateway).authorizer.validate)
        await svc.get(ToolGateway).reload()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as c:
            http_wf = {"StartAt": "Post", "States": {"Post": {
                "Type": "Task", "Resource": endpoint, "Parameters": {"n.$": "$.n",
                                                                     "fail.$": "$.fail"},
                "Catch": [{"ErrorEquals": ["States.Http.StatusCode.503"],
                           "ResultPath": "$.err", "Next": "Down"}], "End": True},
                "Down": {"Type": "Succeed"}}}
            r = await c.put("/v1/workflows/hook", json=http_wf, headers=H(admin))
            assert r.status_code == 200, r.text
            ok = await start(c, bot, "hook", {"n": 21, "fail": False})
            assert ok["status"] == "SUCCEEDED" and ok["output"]["doubled"] == 42
            down = await start(c, bot, "hook", {"n": 1, "fail": True})
            assert down["output"]["err"]["Error"] == "States.Http.StatusCode.503"

            tool_wf = {"StartAt": "Refund", "States": {"Refund": {
                "Type": "Task", "Resource": "keel:tool:issue_refund",
                "Parameters": {"customer_id.$": "$.customer", "amount_cents.$": "$.cents"},
                "ResultPath": "$.refund", "End": True}}}
            r = await c.put("/v1/workflows/tool-refund", json=tool_wf, headers=H(admin))
            assert r.status_code == 200, r.text
            small = await start(c, bot, "tool-refund", {"customer": "c-1", "cents": 1000})
            assert small["status"] == "SUCCEEDED", small
            assert "1000" in orjson.dumps(small["output"]["refund"]).decode()
            big = await start(c, bot, "tool-refund", {"customer": "c-1", "cents": 6000})
            assert big["status"] == "FAILED" and big["error"] == "Keel.policy_denied", big
            bad = {"StartAt": "T", "States": {"T": {"Type": "Task", "End": True,
                                                     "Resource": "keel:tool:nope"}}}
            r = await c.put("/v1/workflows/bad", json=bad, headers=H(admin))
            assert r.status_code == 400 and "nope" in r.json()["error"]["message"]
