"""Hostile-user regressions: console sessions follow their key, approvals record who really
asked, and the console's forms are size-limited like every other route.

Real SQLite, real DBOS workflows, the real app over ASGI (client address 127.0.0.1).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from approval_helpers import ActionLog
from keel.approvals.service import ApprovalsService
from keel.config import Settings
from keel.gateway.services import Services

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.tools.enabled = False
    settings.approvals.polling_interval_s = 0.02
    return settings


@pytest.fixture
def actions(tmp_path: Path, services: Services) -> ActionLog:
    log = ActionLog(tmp_path / "actions.db")
    log.register(services.get(ApprovalsService).registry)
    return log


def H(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def login(client: httpx.AsyncClient, key: str) -> None:
    r = await client.post("/console/login", content=urlencode({"api_key": key}), headers=FORM)
    assert r.status_code == 303, r.text


async def test_revoked_admin_key_ends_its_console_session_at_once(
    client: httpx.AsyncClient, services: Services, user_key: str, actions: ActionLog
) -> None:
    admin = services.keys.create("acme", admin=True, name="soon revoked")
    r = await client.post("/v1/approvals", json={"action": "pay", "amount": 1200.0,
                                                 "risk_level": "HIGH"}, headers=H(user_key))
    assert r.status_code == 201
    approval = r.json()["id"]
    await login(client, admin.secret)
    page = await client.get("/console/approvals")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf

    services.keys.revoke(admin.info.id)

    # every console page now sends the revoked admin to the login page ...
    for path in ("/console", "/console/requests", "/console/approvals"):
        r = await client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/console/login", path
    # ... and the cookie can no longer decide anything
    r = await client.post("/console/approvals/decide", content=urlencode(
        {"csrf": csrf.group(1), "id": approval, "decision": "approve"}), headers=FORM)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    status = (await client.get(f"/v1/approvals/{approval}", headers=H(user_key))).json()
    assert status["status"] == "pending" and actions.runs() == []


async def test_revoked_tenant_key_session_ends_too(
    client: httpx.AsyncClient, services: Services
) -> None:
    key = services.keys.create("globex", agent="viewer")
    await login(client, key.secret)
    assert (await client.get("/console/requests")).status_code == 200
    services.keys.revoke(key.info.id)
    assert (await client.get("/console/requests")).status_code == 303


async def test_approval_records_the_real_requester_not_the_claimed_one(
    client: httpx.AsyncClient, services: Services, admin_key: str, actions: ActionLog
) -> None:
    agent = services.keys.create("acme", agent="bot-1")
    r = await client.post("/v1/approvals", json={
        "action": "pay", "amount": 1200.0, "risk_level": "HIGH", "requested_by": "admin",
    }, headers=H(agent.secret))
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["requested_by"] == f"agent:bot-1 key:{agent.info.id}"
    trail = (await client.get(f"/v1/approvals/{a['id']}/audit", headers=H(admin_key))).json()
    # one "requested" row, whoever the workflow has notified since (those rows are
    # "notified:requested", actor "workflow")
    [requested] = [t for t in trail["data"] if t["event"] == "requested"]
    assert requested["actor"] == f"agent:bot-1 key:{agent.info.id}"
    assert requested["ip"] == "127.0.0.1"
    assert f"key={agent.info.id}" in requested["detail"]
    assert "agent=bot-1" in requested["detail"]
    assert "claimed_requested_by='admin' (unverified)" in requested["detail"]
    # a key without an agent is recorded by its key id
    keyonly = services.keys.create("acme")
    r = await client.post("/v1/approvals", json={"action": "pay", "risk_level": "HIGH"},
                          headers=H(keyonly.secret))
    assert r.json()["requested_by"] == f"key:{keyonly.info.id}"
    r = await client.post("/v1/approvals", json={"action": "pay", "requested_by": 7},
                          headers=H(keyonly.secret))
    assert r.status_code == 400 and r.json()["error"]["param"] == "requested_by"


async def test_console_login_refuses_oversized_body_with_413(
    client: httpx.AsyncClient, settings: Settings, admin_key: str
) -> None:
    limit = settings.server.max_body_bytes
    big = urlencode({"api_key": admin_key, "pad": "x" * (limit + 10)})
    r = await client.post("/console/login", content=big, headers=FORM)
    assert r.status_code == 413
    assert "keel_console" not in r.headers.get("set-cookie", "")

    async def chunks():  # no content-length: refused while streaming, not after buffering
        yield urlencode({"api_key": admin_key}).encode() + b"&pad="
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = await client.post("/console/login", content=chunks(), headers=FORM)
    assert r.status_code == 413
    # the same limit guards the other console forms
    await login(client, admin_key)
    r = await client.post("/console/approvals/decide", content=big, headers=FORM)
    assert r.status_code == 413
