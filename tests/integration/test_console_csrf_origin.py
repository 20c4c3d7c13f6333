"""Console forms cannot be forged from another site, with or without sign-in: posts whose
Origin (or Referer) names another host are refused, and without a session the CSRF token
comes from a random secret in the data dir, never from a constant."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from keel.config import Settings
from keel.gateway.services import Services
from keel.web.shell import CSRF_SECRET_FILE, csrf_secret

FORM = {"content-type": "application/x-www-form-urlencoded"}
# what every keel without auth used to accept from any site
OLD_CONSTANT = hashlib.sha256(b"keel-csrf:no-session").hexdigest()[:32]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.auth_required = False
    settings.tools.enabled = False
    return settings


async def pending_approval(client: httpx.AsyncClient) -> str:
    r = await client.post("/v1/approvals", json={
        "action": "execute_refund", "arguments": {"order_id": "o-1", "amount": 50},
        "risk_level": "HIGH", "reason": "refund"})
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending"
    return str(r.json()["id"])


async def page_token(client: httpx.AsyncClient) -> str:
    page = await client.get("/console/approvals")
    assert page.status_code == 200, page.text
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert m
    return m.group(1)


async def status(client: httpx.AsyncClient, approval_id: str) -> str:
    return str((await client.get(f"/v1/approvals/{approval_id}")).json()["status"])


async def test_no_session_token_comes_from_a_private_random_secret(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    apr = await pending_approval(client)
    token = await page_token(client)
    assert token != OLD_CONSTANT
    secret_file = settings.data_dir / CSRF_SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert csrf_secret(settings.data_dir) != csrf_secret(tmp_path / "other-data")
    r = await client.post("/console/approvals/decide", headers=FORM, content=urlencode(
        {"csrf": OLD_CONSTANT, "id": apr, "decision": "approve"}))
    assert r.status_code == 403
    assert await status(client, apr) == "pending"


@pytest.mark.parametrize("headers", [
    {"origin": "https://evil.example"},
    {"origin": "null"},
    {"origin": "http://keel.evil.example"},
    {"referer": "https://evil.example/page"},
])
async def test_cross_site_console_posts_are_refused(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    apr = await pending_approval(client)
    token = await page_token(client)  # even with the right token
    r = await client.post("/console/approvals/decide", headers={**FORM, **headers},
                          content=urlencode({"csrf": token, "id": apr,
                                             "decision": "approve"}))
    assert r.status_code == 403 and "another site" in r.text
    assert await status(client, apr) == "pending"
    r = await client.post("/console/mode/change", headers={**FORM, **headers},
                          content=urlencode({"csrf": token, "op": "auto"}))
    assert r.status_code == 403
    r = await client.post("/console/login", headers={**FORM, **headers},
                          content=urlencode({"api_key": "whatever"}))
    assert r.status_code == 403


@pytest.mark.parametrize("headers", [
    {}, {"origin": "http://keel"}, {"origin": "http://KEEL:80"},
    {"referer": "http://keel/console/approvals"},
])
async def test_same_site_console_posts_still_work(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    apr = await pending_approval(client)
    token = await page_token(client)
    r = await client.post("/console/approvals/decide", headers={**FORM, **headers},
                          content=urlencode({"csrf": token, "id": apr,
                                             "decision": "approve"}))
    assert r.status_code == 303 and "approved" in r.headers["location"]
    assert await status(client, apr) == "approved"


async def test_a_trusted_proxys_forwarded_host_is_the_site(
    client: httpx.AsyncClient, services: Services
) -> None:
    services.trusted_proxies = frozenset({"127.0.0.1"})
    apr = await pending_approval(client)
    token = await page_token(client)
    r = await client.post("/console/approvals/decide", content=urlencode(
        {"csrf": token, "id": apr, "decision": "approve"}),
        headers={**FORM, "origin": "https://keel.example.com",
                 "x-forwarded-host": "keel.example.com"})
    assert r.status_code == 303, r.text
