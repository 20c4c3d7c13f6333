"""Paid MCP tools behind the tool gateway, Cedar on payments, over-budget approvals, the fetch
egress guard and refunds: a real keel on 127.0.0.1, the sandbox's real paid MCP server (the
x402 SDK's MCP payment wrapper), the SDK facilitator on an in-memory USDC chain, real DBOS
approvals. Nothing is mocked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from typer.testing import CliRunner

from keel.app import build_services, create_app
from keel.approvals.engine import Decider
from keel.approvals.service import ApprovalsService
from keel.config import load_settings
from keel.gateway.services import Services
from keel.tools.gateway import ToolGateway
from keel.wallets import ledger
from keel.wallets.service import WalletService
from keel.x402.client import PaidFetcher
from keel.x402.sandbox import Sandbox, SandboxServer, build_sandbox, sandbox_payee

from live import serve_app

KEY = "test-wallet-key-material-0123456789abcdef"
POLICY = """
@id("tools")
permit(principal, action, resource) when { action != Action::"x402:pay" };

@id("pay-allowed-payee")
permit(principal, action == Action::"x402:pay", resource)
when { context.payee == "PAYEE" };

@id("no-payments-over-a-dollar")
forbid(principal, action == Action::"x402:pay", resource)
when { context.amount_micros > 1000000 };
""".replace("PAYEE", sandbox_payee())


@dataclass
class Stack:
    url: str
    agent_key: str
    admin_key: str
    svc: Services
    sb: Sandbox
    sandbox_url: str

    def auth(self, session: str | None = "s-1") -> dict[str, str]:
        h = {"authorization": f"Bearer {self.agent_key}"}
        if session is not None:
            h["x-keel-session"] = session
        return h


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("paid-tools")
    sb = build_sandbox()
    srv = SandboxServer(sb.app).start()
    settings = load_settings(None, **{
        "data_dir": str(tmp / "data"), "firewall": {"enabled": False},
        "tools": {"servers": [{"name": "market", "url": srv.url + "/mcp"}],
                  "http": [{"name": "search", "url": srv.url + "/search",
                            "input_schema": {"type": "object",
                                             "properties": {"q": {"type": "string"}}}}],
                  "policy": {"reload_s": 0}},
        "wallets": {"enabled": True, "encryption_key": KEY, "payees": [sandbox_payee()],
                    "session_budget_usd": "0.05", "per_call_max_usd": "2.00",
                    "daily_budget_usd": "20", "over_budget": "approval",
                    "x402": {"private_hosts": ["127.0.0.1:*"]}},
        "approvals": {"enabled": True}})
    svc = build_services(settings)
    svc.get(ToolGateway).log.flush_interval_s = 0.01
    svc.get(WalletService).create_wallet("acme", "bot")
    svc.get(WalletService).fund("acme", "bot", 10_000_000)
    for sid in ("s-1", "quote-1", "http-tool", "big", "unk", "settled-err", "egress", "rf", "ov"):
        svc.get(WalletService).open_session("acme", "bot", session_id=sid, opened_by="test",
                                 by_agent=False)
    agent_key = svc.keys.create("acme", agent="bot").secret
    admin_key = svc.keys.create("acme", admin=True).secret
    try:
        with serve_app(create_app(settings, services=svc)) as url:
            gw = svc.get(ToolGateway)
            gw.store.apply(POLICY, validate=gw.authorizer.validate)
            yield Stack(url, agent_key, admin_key, svc, sb, srv.url)
    finally:
        srv.stop()


async def call(stack: Stack, tool: str, args: dict[str, Any], session: str | None = "s-1"
               ) -> httpx.Response:
    await stack.svc.get(ToolGateway).reload()
    async with httpx.AsyncClient(base_url=stack.url, timeout=20) as c:
        return await c.post(f"/v1/tools/{tool}", headers=stack.auth(session),
                            json={"arguments": args})


def books_balanced(stack: Stack) -> bool:
    return stack.svc.db.transaction(ledger.check_books).balanced


def transfers(stack: Stack) -> int:
    address = stack.svc.get(WalletService).wallet("acme", "bot").address
    return len([t for t in stack.sb.chain.transfers if t.payer == address])


async def test_invented_session_ids_are_refused_for_tool_calls(stack: Stack) -> None:
    """Paid or not: a session header must name a session keel opened for this agent, so
    rotating ids resets neither the session budget nor the spend Cedar policies see."""
    before = transfers(stack)
    for tool, args in (("market_quote", {"symbol": "abc"}), ("server_time", {})):
        r = await call(stack, tool, args, session="invented-1")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "session_not_found"
    assert transfers(stack) == before
    assert (await call(stack, "server_time", {}, session="s-1")).status_code == 200


async def test_paid_mcp_tool_is_paid_from_the_agent_wallet(stack: Stack) -> None:
    before = transfers(stack)
    r = await call(stack, "market_quote", {"symbol": "abc"}, session="quote-1")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["result"]["structuredContent"] == {"symbol": "ABC", "price": 123.45}
    assert data["payment"]["amount"] == "$0.02" and data["payment"]["payee"] == sandbox_payee()
    assert r.headers["x-keel-payment-usd"] == "$0.02"
    assert transfers(stack) == before + 1  # settled on the chain by the facilitator
    free = await call(stack, "server_time", {}, session="quote-1")
    assert free.status_code == 200 and free.json()["payment"] is None
    # through /mcp: the receipt travels in the result's _meta
    http = httpx2.AsyncClient(headers=stack.auth("quote-1"), timeout=httpx2.Timeout(20.0),
                              limits=httpx2.Limits(max_keepalive_connections=0))
    async with http, Client(streamable_http_client(stack.url + "/mcp", http_client=http),
                            read_timeout_seconds=15) as mcp:
        res = await mcp.call_tool("define_word", {"word": "ledger"})
        assert not res.is_error and res.structured_content == {
            "word": "ledger", "definition": "a sandbox definition"}
        assert res.meta is not None and res.meta["keel/payment"]["amount"] == "$0.001"
        # a third $0.02 call would pass the $0.05 session budget: approval, never signed
        await mcp.call_tool("market_quote", {"symbol": "x"})
        with pytest.raises(MCPError, match="approval requested") as held:
            await mcp.call_tool("market_quote", {"symbol": "x"})
        assert held.value.data["code"] == "payment_approval_pending"
    assert transfers(stack) == before + 3 and books_balanced(stack)


async def test_paid_http_tool_is_paid_the_same_way(stack: Stack) -> None:
    before = transfers(stack)
    r = await call(stack, "search", {"q": "x402"}, session="http-tool")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["structuredContent"]["hits"] == ["a", "b"]
    assert r.json()["payment"]["amount"] == "$0.005"
    assert transfers(stack) == before + 1 and books_balanced(stack)


async def test_paid_tool_refusals_charge_nothing(stack: Stack) -> None:
    before, verified = transfers(stack), stack.sb.facilitator.verified
    no_session = await call(stack, "market_quote", {"symbol": "a"}, session=None)
    assert no_session.status_code == 400 and "x-keel-session" in no_session.text
    big = await call(stack, "premium_forecast", {}, session="big")  # $5 > forbid over $1
    assert big.status_code == 403
    assert "no-payments-over-a-dollar" in big.json()["error"]["message"]
    assert transfers(stack) == before and stack.sb.facilitator.verified == verified
    wallets = stack.svc.get(WalletService)
    assert wallets.balance(wallets.wallet("acme", "bot"))["held"] == 0
    # every payment decision is in the tool decision log, like tool calls
    async with httpx.AsyncClient(base_url=stack.url) as c:
        rows = (await c.get("/v1/admin/tool-decisions", params={"decision": "deny"},
                            headers={"authorization": f"Bearer {stack.admin_key}"})).json()
    assert any(r["action"] == "x402:pay" and "no-payments-over-a-dollar" in r["policy_ids"]
               for r in rows["data"])


async def test_over_budget_payment_waits_for_a_human_then_pays_once(stack: Stack) -> None:
    engine = stack.svc.get(ApprovalsService).engine
    for _ in range(2):  # $0.04 of the $0.05 session budget
        assert (await call(stack, "market_quote", {"symbol": "m"}, "ov")).status_code == 200
    before = transfers(stack)
    held = await call(stack, "market_quote", {"symbol": "m"}, "ov")
    assert held.status_code == 202, held.text
    err = held.json()["error"]
    assert err["code"] == "payment_approval_pending"
    assert "session budget $0.05: spent $0.04, price $0.02" in err["message"]
    again = await call(stack, "market_quote", {"symbol": "m"}, "ov")  # the same approval
    assert again.json()["error"]["approval_id"] == err["approval_id"]
    a = await engine.get(err["approval_id"])
    assert a.action == "x402:pay" and a.arguments["amount"] == "$0.02"
    # the agent cannot file (and auto-approve) the approval its held payment would find
    async with httpx.AsyncClient(base_url=stack.url) as c:
        forged = await c.post("/v1/approvals", headers=stack.auth(None), json={
            "action": "anything", "risk_level": "LOW",
            "idempotency_key": "payment:" + "0" * 40})
    assert forged.status_code == 400 and "reserved" in forged.json()["error"]["message"]
    await engine.decide("approve", Decider("cfo@example.com", "api"),
                        approval_id=err["approval_id"])
    # the approval is for that request only: other arguments at the same price ask again
    other = await call(stack, "market_quote", {"symbol": "other"}, "ov")
    assert other.status_code == 202
    assert other.json()["error"]["approval_id"] != err["approval_id"]
    ok = await call(stack, "market_quote", {"symbol": "m"}, "ov")
    assert ok.status_code == 200 and ok.json()["payment"]["amount"] == "$0.02"
    assert transfers(stack) == before + 1
    third = await call(stack, "market_quote", {"symbol": "m"}, "ov")  # consumed: ask again
    assert third.status_code == 202 and third.json()["error"]["approval_id"] != err["approval_id"]
    await engine.decide("deny", Decider("cfo@example.com", "api"),
                        approval_id=third.json()["error"]["approval_id"])
    denied = await call(stack, "market_quote", {"symbol": "m"}, "ov")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "budget_exceeded"
    assert transfers(stack) == before + 1 and books_balanced(stack)


async def _first_unpaid(stack: Stack, tool: str, args: dict[str, Any]) -> Any:
    """The paid tool's real "payment required" answer (asked from this test's loop)."""
    async with Client(streamable_http_client(stack.sandbox_url + "/mcp"),
                      read_timeout_seconds=10) as sandbox:
        first = await sandbox.call_tool(tool, args)
    assert first.is_error and first.structured_content["x402Version"] == 2
    return first


def _tool_call(stack: Stack, tool: str, args: dict[str, Any], session: str) -> Any:
    from keel.gateway.context import Principal
    from keel.tools.ports import ToolCall

    return ToolCall("td-test", tool, "market", args, Principal("k", "acme", "bot"), "bot",
                    session, None)


async def test_unknown_outcome_keeps_the_hold_and_a_refusal_releases_it(stack: Stack) -> None:
    """A client-side timeout after the signed call was sent may still settle: keep the money
    held; a JSON-RPC error the server sent means it did not settle: release."""
    from keel.errors import PaymentFailed, ToolFailed
    from keel.wallets.tables import payments

    assert stack.svc.get(ToolGateway).payments is not None
    hook = stack.svc.get(ToolGateway).payments
    args = {"symbol": "slow"}
    first = await _first_unpaid(stack, "market_quote", args)

    async def timed_out(meta: dict[str, Any]) -> Any:
        raise ToolFailed("tool server 'market' refused 'market_quote': timed out",
                         upstream_code=-32001)

    with pytest.raises(PaymentFailed, match="outcome is unknown") as unknown:
        await hook.handle(_tool_call(stack, "market_quote", args, "unk"), first, timed_out)

    async def refused(meta: dict[str, Any]) -> Any:
        raise ToolFailed("tool server 'market' refused 'market_quote': bad params",
                         upstream_code=-32602)

    with pytest.raises(ToolFailed):
        await hook.handle(_tool_call(stack, "market_quote", args, "unk"), first, refused)
    rows = stack.svc.db.transaction(lambda c: {
        r.id: r.status for r in c.execute(payments.select().where(
            payments.c.session_id == "unk"))})
    assert rows[unknown.value.extra["payment_id"]] == "held"
    assert sorted(rows.values()) == ["held", "released"]
    assert books_balanced(stack)


async def test_a_successful_settlement_counts_even_on_an_error_result(stack: Stack) -> None:
    import mcp_types as types

    from keel.wallets.tables import payments

    assert stack.svc.get(ToolGateway).payments is not None
    args = {"symbol": "err"}
    first = await _first_unpaid(stack, "market_quote", args)

    async def settled_but_failed(meta: dict[str, Any]) -> Any:
        return types.CallToolResult.model_validate({
            "content": [{"type": "text", "text": "boom"}], "isError": True,
            "_meta": {"x402/payment-response": {
                "success": True, "transaction": "0x" + "ab" * 32, "network": "eip155:84532",
                "payer": "0x" + "2" * 40}}})

    out = await stack.svc.get(ToolGateway).payments.handle(
        _tool_call(stack, "market_quote", args, "settled-err"), first, settled_but_failed)
    assert out.is_error and out.meta is not None and out.meta["keel/payment"]["amount"] == "$0.02"
    statuses = stack.svc.db.transaction(lambda c: [r.status for r in c.execute(
        payments.select().where(payments.c.session_id == "settled-err"))])
    assert statuses == ["settled"] and books_balanced(stack)


async def test_fetch_refuses_private_and_unlisted_hosts(stack: Stack) -> None:
    fetcher = stack.svc.get(PaidFetcher)
    assert fetcher is not None
    async with httpx.AsyncClient(base_url=stack.url) as c:
        async def fetch(url: str) -> httpx.Response:
            return await c.post("/v1/fetch", headers=stack.auth(None),
                                json={"url": url, "session_id": "egress"})

        assert (await fetch(stack.sandbox_url + "/free")).status_code == 200  # listed
        for url in ("http://169.254.169.254/latest/meta-data/",  # cloud metadata
                    "http://10.0.0.7/admin", "http://[::1]:8080/",
                    "http://2130706433:" + stack.sandbox_url.rsplit(":", 1)[1] + "/free",
                    "http://localhost:" + stack.sandbox_url.rsplit(":", 1)[1] + "/free"):
            r = await fetch(url)
            assert r.status_code == 403, (url, r.text)
            assert r.json()["error"]["code"] == "egress_denied", url
        assert "private_hosts" in (await fetch("http://10.0.0.7/")).json()["error"]["message"]
        for bad in ("http://h:99999/", "https://user:secret@api.example.com/"):
            r = await fetch(bad)
            assert r.status_code == 400, (bad, r.text)
        assert "credentials" in (await fetch("https://u:p@api.example.com/")).text
        saved = fetcher.egress.hosts
        fetcher.egress.hosts = ["api.example.com"]
        try:
            r = await fetch(stack.sandbox_url + "/free")
            assert r.status_code == 403 and "allow-list" in r.json()["error"]["message"]
        finally:
            fetcher.egress.hosts = saved


async def test_refund_by_http_and_cli(stack: Stack, tmp_path: Path) -> None:
    w = stack.svc.get(WalletService).wallet("acme", "bot")
    paid = await call(stack, "define_word", {"word": "refund"}, session="rf")
    pid = paid.json()["payment"]["id"]
    available = stack.svc.get(WalletService).balance(w)["available"]
    admin = {"authorization": f"Bearer {stack.admin_key}"}
    async with httpx.AsyncClient(base_url=stack.url) as c:
        agent = await c.post(f"/v1/admin/payments/{pid}/refund", headers=stack.auth(None))
        assert agent.status_code == 403
        r = await c.post(f"/v1/admin/payments/{pid}/refund", headers=admin,
                         json={"memo": "payee ref 991"})
        assert r.status_code == 200 and r.json()["amount"] == "$0.001", r.text
        twice = await c.post(f"/v1/admin/payments/{pid}/refund", headers=admin)
        assert twice.status_code == 409 and "refunded" in twice.json()["error"]["message"]
        missing = await c.post("/v1/admin/payments/nope/refund", headers=admin)
        assert missing.status_code == 404
    assert stack.svc.get(WalletService).balance(w)["available"] == available + 1_000
    # the CLI on the same database
    from keel.cli.main import build

    second = (await call(stack, "define_word", {"word": "cli"}, session="rf")).json()
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{stack.svc.settings.data_dir}"\n[wallets]\nenabled = true\n'
                   f'encryption_key = "{KEY}"\n')
    runner = CliRunner()
    out = runner.invoke(build(), ["--config", str(cfg), "wallet", "refund",
                                  second["payment"]["id"], "-t", "acme", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["status"] == "refunded"
    bad = runner.invoke(build(), ["--config", str(cfg), "wallet", "refund", "nope", "-t", "acme"])
    assert bad.exit_code == 1 and "no payment" in bad.output
    assert books_balanced(stack)
