"""x402 paid calls end to end: keel's client, the SDK's middleware and facilitator, real HTTP
on 127.0.0.1, real SQLite and PostgreSQL ledgers. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from starlette.responses import JSONResponse
from x402 import x402Client
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.schemas import PaymentRequired

from keel.app import build_services
from keel.config import load_settings
from keel.errors import (
    BudgetExceeded,
    PayeeNotAllowed,
    PaymentApprovalPending,
    PaymentFailed,
    PaymentRequirementsInvalid,
)
from keel.gateway.services import Services
from keel.tools.gateway import ToolGateway
from keel.wallets import ledger
from keel.wallets.hooks import ApprovalTicket, PaymentIntent
from keel.wallets.service import WalletService
from keel.x402.client import FetchRequest, PaidFetcher
from keel.x402.sandbox import Sandbox, SandboxServer, build_sandbox, sandbox_payee

KEY = "test-wallet-key-material-0123456789abcdef"
NET = "eip155:84532"


@pytest.fixture
def sandbox() -> Iterator[tuple[Sandbox, SandboxServer]]:
    sb = build_sandbox()
    srv = SandboxServer(sb.app).start()
    yield sb, srv
    srv.stop()


def wallet_services(tmp_path: Path, db_url: str | None = None, **wallets: Any) -> Services:
    cfg: dict[str, Any] = {"enabled": True, "encryption_key": KEY, "payees": [sandbox_payee()],
                           "session_budget_usd": "0.50", "per_call_max_usd": "0.10",
                           "x402": {"private_hosts": ["127.0.0.1:*"]}}
    cfg.update(wallets)
    kw: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "firewall": {"enabled": False},
                          "wallets": cfg}
    if db_url:
        kw["database_url"] = db_url
    return build_services(load_settings(None, **kw))


PAY_POLICY = '@id("agents-may-pay")\npermit(principal, action == Action::"x402:pay", resource);'


async def allow_payments(s: Services, *, started: bool = False, text: str = PAY_POLICY) -> None:
    """Cedar decides payments (default deny): connect the policy side and permit paying."""
    if not started:
        await s.get(ToolGateway).connect()
    s.get(ToolGateway).store.apply(text, validate=s.get(ToolGateway).authorizer.validate)
    await s.get(ToolGateway).reload()


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Services]:
    s = wallet_services(tmp_path)
    s.get(WalletService).create_wallet("acme", "bot")
    s.get(WalletService).fund("acme", "bot", 5_000_000)
    open_sessions(s, "s", "s-50")
    await allow_payments(s)
    yield s
    await s.get(PaidFetcher).aclose()
    await s.get(ToolGateway).aclose()
    s.db.dispose()


def open_sessions(s: Services, *ids: str) -> None:
    """Budgets belong to sessions an operator opened (wallets.sessions = "issued")."""
    for sid in ids:
        s.get(WalletService).open_session("acme", "bot", session_id=sid, opened_by="test",
                                          by_agent=False)


def books(s: Services) -> ledger.BooksReport:
    return s.db.transaction(ledger.check_books)


def held(s: Services) -> int:
    return s.get(WalletService).balance(s.get(WalletService).wallet("acme", "bot"))["held"]


async def _fifty_concurrent(s: Services, srv: SandboxServer, sb: Sandbox) -> None:
    w = s.get(WalletService).wallet("acme", "bot")
    results = await asyncio.gather(*[
        s.get(PaidFetcher).fetch("acme", "bot",
                                 FetchRequest(url=srv.url + "/report", session_id="s-50"))
        for _ in range(50)], return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(ok) == 25 and len(refused) == 25, [type(r) for r in results]
    assert all(r.status == 200 and r.payment is not None for r in ok)
    assert "session budget $0.50: spent" in str(refused[0])
    # refused before signing: the facilitator saw exactly 25 payments, the chain 25 transfers
    assert sb.facilitator.verified == 25 and sb.facilitator.settled == 25
    assert len([t for t in sb.chain.transfers if t.payer == w.address]) == 25
    assert s.get(WalletService).balance(w) == {"available": 5_000_000 - 25 * 20_000, "held": 0}
    report = books(s)
    assert report.balanced, report


async def test_fifty_concurrent_paid_calls_sqlite(
        svc: Services, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    await _fifty_concurrent(svc, sandbox[1], sandbox[0])


async def test_fifty_concurrent_paid_calls_postgres(
        tmp_path: Path, postgres_clean_url: str, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    s = wallet_services(tmp_path, postgres_clean_url)
    s.get(WalletService).create_wallet("acme", "bot")
    s.get(WalletService).fund("acme", "bot", 5_000_000)
    open_sessions(s, "s-50")
    await allow_payments(s)
    try:
        await _fifty_concurrent(s, sandbox[1], sandbox[0])
    finally:
        await s.get(PaidFetcher).aclose()
        await s.get(ToolGateway).aclose()
        s.db.dispose()


async def _signed_header(s: Services, url: str, mutate: Any = None) -> str:
    """What an eavesdropper would capture: a valid PAYMENT-SIGNATURE for ``url``."""
    async with httpx.AsyncClient() as c:
        r = await c.get(url)
    from x402.http.utils import decode_payment_required_header

    required = decode_payment_required_header(r.headers["payment-required"])
    assert isinstance(required, PaymentRequired)
    client = x402Client()
    client.register(NET, ExactEvmClientScheme(
        await s.get(WalletService).signer(s.get(WalletService).wallet("acme", "bot"))))  # type: ignore[arg-type]
    payload = await client.create_payment_payload(required)
    if mutate is not None:
        mutate(payload)
    return encode_payment_signature_header(payload)


async def test_replayed_payment_header_is_refused(
        svc: Services, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    sb, srv = sandbox
    header = await _signed_header(svc, srv.url + "/report")
    async with httpx.AsyncClient() as c:
        first = await c.get(srv.url + "/report", headers={"PAYMENT-SIGNATURE": header})
        replay = await c.get(srv.url + "/report", headers={"PAYMENT-SIGNATURE": header})
    assert first.status_code == 200
    assert replay.status_code == 402
    assert len(sb.chain.transfers) == 1  # charged once


async def test_tampered_payee_and_expired_authorization_are_refused(
        svc: Services, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    sb, srv = sandbox
    rogue = "0x" + "12" * 20

    def redirect(p: Any) -> None:  # keep the signature, change where the money goes
        p.payload["authorization"]["to"] = rogue
        p.accepted.pay_to = rogue

    def expire(p: Any) -> None:
        p.payload["authorization"]["validBefore"] = str(int(time.time()) - 5)

    for mutate in (redirect, expire):
        header = await _signed_header(svc, srv.url + "/report", mutate)
        async with httpx.AsyncClient() as c:
            r = await c.get(srv.url + "/report", headers={"PAYMENT-SIGNATURE": header})
        assert r.status_code == 402
    assert sb.chain.transfers == []


@pytest.mark.parametrize(("path", "error", "message"), [
    ("/rogue", PayeeNotAllowed, "not on the allow-list"),
    ("/premium", BudgetExceeded, r"per-call cap \$0.10: price \$5.00"),
    ("/stale", PaymentRequirementsInvalid, "expire in 1 s"),
])
async def test_refused_before_signing_nothing_charged(
        svc: Services, sandbox: tuple[Sandbox, SandboxServer], path: str,
        error: type[Exception], message: str) -> None:
    sb, srv = sandbox
    with pytest.raises(error, match=message):
        await svc.get(PaidFetcher).fetch("acme", "bot",
                                         FetchRequest(url=srv.url + path, session_id="s"))
    assert sb.facilitator.verified == 0 and sb.chain.transfers == []
    assert held(svc) == 0 and books(svc).balanced


async def test_facilitator_outage_releases_the_hold(
        svc: Services, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    sb, srv = sandbox
    sb.facilitator.outage = True
    with pytest.raises(PaymentFailed, match=r"facilitator unreachable.*nothing was charged"):
        await svc.get(PaidFetcher).fetch("acme", "bot", FetchRequest(url=srv.url + "/report",
                                                         session_id="s"))
    assert held(svc) == 0 and sb.chain.transfers == [] and books(svc).balanced
    sb.facilitator.outage = False
    ok = await svc.get(PaidFetcher).fetch("acme", "bot", FetchRequest(url=srv.url + "/report",
                                                          session_id="s"))
    assert ok.status == 200 and ok.payment is not None


def _b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def _req(**over: Any) -> dict[str, Any]:
    r = {"scheme": "exact", "network": NET, "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
         "amount": "1000", "payTo": sandbox_payee(), "maxTimeoutSeconds": 60,
         "extra": {"name": "USDC", "version": "2"}}
    r.update(over)
    return r


BAD_402 = {
    "missing": ({}, "without a PAYMENT-REQUIRED header"),
    "not-base64": ({"PAYMENT-REQUIRED": "%%%not base64%%%"}, "malformed PAYMENT-REQUIRED"),
    "not-json": ({"PAYMENT-REQUIRED": base64.b64encode(b"hello").decode()}, "malformed"),
    "no-accepts": ({"PAYMENT-REQUIRED": _b64({"x402Version": 2})}, "malformed"),
    "empty-accepts": ({"PAYMENT-REQUIRED": _b64({"x402Version": 2, "accepts": []})},
                      "accepts no payment option"),
    "v1": ({"PAYMENT-REQUIRED": _b64({"x402Version": 1, "accepts": []})}, "x402 version 1"),
    "unknown-scheme": ({"PAYMENT-REQUIRED": _b64({"x402Version": 2,
                                                  "accepts": [_req(scheme="stream")]})},
                       "unknown scheme"),
    "unknown-network": ({"PAYMENT-REQUIRED": _b64({"x402Version": 2,
                                                   "accepts": [_req(network="eip155:1")]})},
                        "network not enabled"),
    "bad-amount": ({"PAYMENT-REQUIRED": _b64({"x402Version": 2,
                                              "accepts": [_req(amount="-5")]})},
                   "amount must be positive|not a plain integer"),
}


@pytest.fixture
def bad_server() -> Iterator[SandboxServer]:
    app = FastAPI()

    async def bad(kind: str) -> JSONResponse:
        return JSONResponse({}, status_code=402, headers=BAD_402[kind][0])

    app.add_api_route("/bad/{kind}", bad, methods=["GET"])
    srv = SandboxServer(app).start()
    yield srv
    srv.stop()


async def test_malformed_402_answers_give_clear_errors_and_hold_nothing(
        svc: Services, bad_server: SandboxServer) -> None:
    for kind, (_headers, message) in BAD_402.items():
        with pytest.raises(PaymentRequirementsInvalid, match=message):
            await svc.get(PaidFetcher).fetch("acme", "bot", FetchRequest(
                url=f"{bad_server.url}/bad/{kind}", session_id="s"))
    assert held(svc) == 0 and books(svc).balanced


async def test_approval_hook_turns_over_budget_into_a_request(
        svc: Services, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    _sb, srv = sandbox
    asked: list[tuple[PaymentIntent, str]] = []

    class RecordingApprovals:  # stands in for the approvals capability (issue 7)
        async def request(self, intent: PaymentIntent, reason: str,
                          kind: str) -> ApprovalTicket:
            asked.append((intent, reason))
            return ApprovalTicket(id=f"ap-{len(asked)}")

    svc.get(WalletService).approvals = RecordingApprovals()
    svc.get(WalletService).settings.over_budget = "approval"
    svc.get(WalletService).settings.session_budget_usd = __import__("decimal").Decimal("0.03")
    open_sessions(svc, "a")  # opened with the session budget in force now
    await svc.get(PaidFetcher).fetch("acme", "bot",
                                     FetchRequest(url=srv.url + "/report", session_id="a"))
    with pytest.raises(PaymentApprovalPending, match="approval requested") as exc:
        await svc.get(PaidFetcher).fetch("acme", "bot", FetchRequest(url=srv.url + "/report",
                                                         session_id="a"))
    assert exc.value.extra["approval_id"] == "ap-1"
    assert "session budget $0.03: spent $0.02, price $0.02" in asked[0][1]


async def test_fetch_endpoint_for_an_agent(
        tmp_path: Path, sandbox: tuple[Sandbox, SandboxServer]) -> None:
    from keel.app import create_app

    _sb, srv = sandbox
    s = wallet_services(tmp_path)
    s.get(WalletService).create_wallet("acme", "bot")
    s.get(WalletService).fund("acme", "bot", 1_000_000)
    agent_key = s.keys.create("acme", agent="bot").secret
    admin_key = s.keys.create("acme", admin=True).secret
    app = create_app(s.settings, services=s)
    async with app.router.lifespan_context(app):
        await allow_payments(s, started=True)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            auth = {"authorization": f"Bearer {agent_key}"}
            opened = await c.post("/v1/wallet/sessions", json={"agent": "bot", "id": "web"},
                                  headers={"authorization": f"Bearer {admin_key}"})
            assert opened.status_code == 201, opened.text
            r = await c.post("/v1/fetch", headers=auth,
                             json={"url": srv.url + "/search", "method": "POST",
                                   "body": {"q": "x"}, "session_id": "web"})
            assert r.status_code == 200, r.text
            data = r.json()
            assert data["status"] == 200 and data["payment"]["amount"] == "$0.005"
            assert r.headers["x-keel-payment-usd"] == "$0.005"
            free = await c.post("/v1/fetch", headers=auth,
                                json={"url": srv.url + "/free", "session_id": "web"})
            assert free.json()["payment"] is None
            over = await c.post("/v1/fetch", headers=auth,
                                json={"url": srv.url + "/premium", "session_id": "web"})
            assert over.status_code == 403
            assert over.json()["error"]["code"] == "budget_exceeded"
            bad = await c.post("/v1/fetch", headers=auth, json={"url": "ftp://x"})
            assert bad.status_code == 400
            no_agent = await c.post("/v1/fetch", headers={
                "authorization": f"Bearer {admin_key}"},
                json={"url": srv.url + "/free", "session_id": "x"})
            assert no_agent.status_code == 400 and "no agent" in no_agent.text
            w = (await c.get("/v1/wallet", headers=auth)).json()
            assert w["available_micros"] == 1_000_000 - 5_000
            public = (await c.get("/metrics")).text  # untrusted: no tenant, agent, payee
            assert 'keel_x402_payments_total{agent="*",outcome="settled",tenant="*"} 1.0' \
                in public and 'tenant="acme"' not in public
            s.settings.metrics.token = SecretStr("scrape-token")
            metrics = (await c.get("/metrics", headers={
                "authorization": "Bearer scrape-token"})).text
            assert 'keel_x402_payments_total{agent="bot",outcome="settled",tenant="acme"} 1.0' \
                in metrics
            login = await c.post("/console/login", data={"api_key": admin_key})
            assert login.status_code == 303
            c.cookies = login.cookies
            page = await c.get("/console/wallets")
            assert page.status_code == 200
            assert 'id="total-x402-spend">$0.005<' in page.text and "<svg" in page.text
            assert "<td>web</td><td>1</td><td>$0.005</td>" in page.text  # per session


@pytest.mark.parametrize("headers", [{"x-a": "1\r\nx-injected: 1"}, {"bad name": "v"},
                                     {"x-a": "nul\x00"}])
async def test_fetch_refuses_header_injection_with_400(
        tmp_path: Path, sandbox: tuple[Sandbox, SandboxServer], headers: dict) -> None:
    from keel.app import create_app

    _sb, srv = sandbox
    s = wallet_services(tmp_path)
    s.get(WalletService).create_wallet("acme", "bot")
    agent_key = s.keys.create("acme", agent="bot").secret
    app = create_app(s.settings, services=s)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            r = await c.post("/v1/fetch", headers={"authorization": f"Bearer {agent_key}"},
                             json={"url": srv.url + "/free", "session_id": "s",
                                   "headers": headers})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "headers"
