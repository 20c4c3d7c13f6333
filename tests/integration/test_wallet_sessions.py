"""Budget sessions an agent cannot reset: real x402 sandbox on 127.0.0.1, real SQLite ledger,
real Cedar, the gateway's HTTP surface. An agent that invents session ids gets no budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.app import build_services, create_app
from keel.config import load_settings
from keel.gateway.services import Services
from keel.tools.gateway import ToolGateway
from keel.wallets import ledger
from keel.wallets.service import WalletService
from keel.x402.sandbox import Sandbox, SandboxServer, build_sandbox, sandbox_payee

KEY = "test-wallet-key-material-0123456789abcdef"
PAY_POLICY = '@id("agents-may-pay")\npermit(principal, action == Action::"x402:pay", resource);'


@dataclass
class Stack:
    c: httpx.AsyncClient
    svc: Services
    sandbox: Sandbox
    url: str  # the sandbox
    keys: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[who]}"}

    async def fetch(self, who: str, path: str, session: str) -> httpx.Response:
        return await self.c.post("/v1/fetch", headers=self.auth(who),
                                 json={"url": self.url + path, "session_id": session})

    async def open(self, who: str, **body: Any) -> httpx.Response:
        return await self.c.post("/v1/wallet/sessions", headers=self.auth(who), json=body)


@pytest.fixture
def sandbox() -> Iterator[tuple[Sandbox, SandboxServer]]:
    sb = build_sandbox()
    srv = SandboxServer(sb.app).start()
    yield sb, srv
    srv.stop()


@pytest.fixture
async def stack(tmp_path: Path, sandbox: tuple[Sandbox, SandboxServer]
                ) -> AsyncIterator[Stack]:
    sb, srv = sandbox
    settings = load_settings(None, data_dir=str(tmp_path / "data"), firewall={"enabled": False},
                             wallets={"enabled": True, "encryption_key": KEY,
                                      "payees": [sandbox_payee()],
                                      "session_budget_usd": "0.05", "per_call_max_usd": "0.10",
                                      "daily_budget_usd": "20.00",
                                      "agent_sessions_per_day": 2,
                                      "x402": {"private_hosts": ["127.0.0.1:*"]}})
    svc = build_services(settings)
    for agent in ("bot", "other"):
        svc.get(WalletService).create_wallet("acme", agent)
        svc.get(WalletService).fund("acme", agent, 5_000_000)
    keys = {"bot": svc.keys.create("acme", agent="bot").secret,
            "other": svc.keys.create("acme", agent="other").secret,
            "admin": svc.keys.create("acme", admin=True).secret,
            "orchestrator": svc.keys.create("acme", name="orchestrator").secret,
            "globex": svc.keys.create("globex", name="orchestrator").secret}
    app = create_app(settings, services=svc)
    async with app.router.lifespan_context(app):
        gw = svc.get(ToolGateway)
        gw.store.apply(PAY_POLICY, validate=gw.authorizer.validate)
        await svc.get(ToolGateway).reload()
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            yield Stack(c, svc, sb, srv.url, keys)


def bot_payments(s: Stack) -> int:
    w = s.svc.get(WalletService).wallet("acme", "bot")
    return len([t for t in s.sandbox.chain.transfers if t.payer == w.address])


async def test_an_agent_inventing_session_ids_gets_no_budget(stack: Stack) -> None:
    """$0.02 a call, $0.05 a session: a fresh id per call used to mean a fresh budget."""
    for i in range(10):
        r = await stack.fetch("bot", "/report", f"fresh-{i}")
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "session_not_found" and err["param"] == "session_id"
        assert f"'fresh-{i}' was not opened for agent 'bot'" in err["message"]
    free = await stack.fetch("bot", "/free", "made-up")  # refused before any request
    assert free.status_code == 404
    assert bot_payments(stack) == 0 and stack.sandbox.facilitator.verified == 0
    events = stack.svc.db.transaction(lambda c: c.execute(
        ledger.events.select().where(ledger.events.c.kind == "refused")).all())
    assert len(events) == 11  # every attempt is in the audit trail


async def test_an_agent_key_opens_a_few_sessions_a_day_at_the_default_budget(
        stack: Stack) -> None:
    first = await stack.open("bot")
    assert first.status_code == 201, first.text
    s1 = first.json()
    assert s1["id"].startswith("ses_") and len(s1["id"]) > 20  # unguessable
    assert s1["budget"] == "$0.05" and s1["by_agent"] is True and s1["agent"] == "bot"
    assert first.headers["location"] == f"/v1/wallet/sessions/{s1['id']}"
    for _ in range(2):  # $0.04 of $0.05
        assert (await stack.fetch("bot", "/report", s1["id"])).status_code == 200
    over = await stack.fetch("bot", "/report", s1["id"])
    assert over.status_code == 403 and over.json()["error"]["code"] == "budget_exceeded"
    assert (await stack.open("bot")).status_code == 201  # the second of 2 today
    third = await stack.open("bot")
    assert third.status_code == 429, third.text
    assert third.json()["error"]["code"] == "session_limit"
    # the quota is per UTC day: the client is told when it resets
    assert 0 < int(third.headers["retry-after"]) <= 86_400
    assert "agent_sessions_per_day" in third.json()["error"]["message"]
    # and it cannot widen what it gets
    assert (await stack.open("other", budget_usd="5.00")).status_code == 403
    named = await stack.open("other", id="my-own-id")
    assert named.status_code == 400 and named.json()["error"]["param"] == "id"
    assert (await stack.open("other", agent="bot")).status_code == 403
    assert (await stack.open("other", tenant="globex")).status_code == 400
    # the other agent cannot spend the bot's session
    theirs = await stack.fetch("other", "/report", s1["id"])
    assert theirs.status_code == 404
    assert bot_payments(stack) == 2


async def test_concurrent_opens_cannot_exceed_the_agent_quota(stack: Stack) -> None:
    answers = await asyncio.gather(*[stack.open("bot") for _ in range(8)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [201, 201] + [429] * 6, codes


async def test_operators_and_the_orchestrator_open_sessions_with_budgets(stack: Stack) -> None:
    r = await stack.open("orchestrator", agent="bot", budget_usd="0.03", id="run-42",
                         ttl_s=600)
    assert r.status_code == 201, r.text
    assert r.json()["budget_micros"] == 30_000 and r.json()["by_agent"] is False
    assert (await stack.fetch("bot", "/report", "run-42")).status_code == 200
    over = await stack.fetch("bot", "/report", "run-42")
    assert over.status_code == 403 and "session budget $0.03" in over.text
    info = (await stack.c.get("/v1/wallet/sessions/run-42", headers=stack.auth("bot"))).json()
    assert info["spent_micros"] == 20_000 and info["calls"] == 1
    again = await stack.open("admin", agent="bot", id="run-42")
    assert again.status_code == 409  # a session id is opened once: no reset by re-opening
    # operator opens are not counted against the agent's own quota
    for i in range(3):
        assert (await stack.open("admin", agent="bot", id=f"op-{i}")).status_code == 201
    big = await stack.open("admin", agent="bot", budget_usd="1.00", id="big")
    assert big.status_code == 201
    closed = await stack.c.delete("/v1/wallet/sessions/big", headers=stack.auth("bot"))
    assert closed.status_code == 200 and closed.json()["closed_at"] is not None
    after = await stack.fetch("bot", "/report", "big")
    assert after.status_code == 403 and after.json()["error"]["code"] == "session_closed"
    # another tenant's orchestrator does not see acme's sessions
    foreign = await stack.c.get("/v1/wallet/sessions/run-42", headers=stack.auth("globex"))
    assert foreign.status_code == 404
    assert (await stack.c.get("/v1/wallet/sessions", headers=stack.auth("globex"))).json()[
        "data"] == []
    listed = (await stack.c.get("/v1/wallet/sessions?agent=bot",
                                headers=stack.auth("orchestrator"))).json()["data"]
    states = {s["id"]: (s["state"], s["spent_micros"]) for s in listed}
    assert states["run-42"] == ("open", 20_000) and states["big"] == ("closed", 0)
    mine = (await stack.c.get("/v1/wallet/sessions", headers=stack.auth("other"))).json()
    assert mine["data"] == []  # an agent lists only its own
    login = await stack.c.post("/console/login", data={"api_key": stack.keys["admin"]})
    stack.c.cookies = login.cookies
    page = await stack.c.get("/console/wallets")
    assert page.status_code == 200 and 'id="sessions"' in page.text
    assert "<td>run-42</td><td>bot</td><td>$0.03</td><td>$0.02</td>" in page.text
    report = stack.svc.db.transaction(ledger.check_books)
    assert report.balanced, report


async def test_an_expired_session_is_refused(stack: Stack) -> None:
    r = await stack.open("admin", agent="bot", id="short", ttl_s=0.2)
    assert r.status_code == 201
    await asyncio.sleep(0.3)
    late = await stack.fetch("bot", "/report", "short")
    assert late.status_code == 403 and "expired" in late.json()["error"]["message"]


@pytest.mark.parametrize("body, status, param", [
    ({}, 400, "agent"),
    ({"agent": "nobody"}, 404, None),
    ({"agent": "bot", "budget_usd": "two dollars"}, 400, "budget_usd"),
    ({"agent": "bot", "budget_usd": "0.0000001"}, 400, "budget_usd"),
    ({"agent": "bot", "budget_usd": "-1"}, 400, "budget_usd"),
    ({"agent": "bot", "budget_usd": "NaN"}, 400, "budget_usd"),
    ({"agent": "bot", "budget_usd": "\u0663"}, 400, "budget_usd"),  # Arabic-Indic 3
    ({"agent": "bot", "budget_usd": "1e2"}, 400, "budget_usd"),
    ({"agent": "bot", "budget_usd": True}, 400, "budget_usd"),
    ({"agent": "bot", "ttl_s": 10**9}, 400, "ttl_s"),
    ({"agent": "bot", "ttl_s": "soon"}, 400, "ttl_s"),
    ({"agent": "bot", "max_calls": 0}, 400, "max_calls"),
    ({"agent": "bot", "id": "bad id with spaces"}, 400, "id"),
    ({"agent": "bot", "colour": "red"}, 400, "colour"),
])
async def test_bad_session_requests_are_clear_4xx(stack: Stack, body: dict[str, Any],
                                                 status: int, param: str | None) -> None:
    r = await stack.open("admin", **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param, err
