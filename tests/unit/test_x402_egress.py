"""The fetch egress guard and reading x402 terms out of MCP tool results (no network)."""

from __future__ import annotations

import socket
from typing import Any

import mcp_types as types
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from keel.errors import EgressDenied, PaymentRequirementsInvalid
from keel.x402.egress import (
    EgressPolicy,
    EgressRefused,
    GuardedResolver,
    is_public,
    literal_addresses,
)
from keel.x402.mcp_tools import payment_required


@pytest.mark.parametrize("address,public", [
    ("93.184.216.34", True), ("2606:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("::1", False),
    ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("224.0.0.1", False),
    # IPv6 forms that carry an IPv4 address: NAT64 -> 169.254.169.254, 6to4 / compatible /
    # SIIT -> 127.0.0.1; a public NAT64 target stays public
    ("64:ff9b::a9fe:a9fe", False), ("2002:7f00:1::", False), ("::7f00:1", False),
    ("::ffff:0:7f00:1", False), ("64:ff9b::5db8:d822", True),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


def test_policy_host_patterns_and_literals() -> None:
    p = EgressPolicy(["*.example.com", "api.partner.io:443"], ["127.0.0.1:4020"])
    p.check_url("https://data.example.com/x")
    p.check_url("https://api.partner.io/v1")
    with pytest.raises(EgressDenied, match="allow-list"):
        p.check_url("http://api.partner.io/v1")  # port 80 is not listed
    with pytest.raises(EgressDenied, match="allow-list"):
        p.check_url("https://evil.com/")
    open_policy = EgressPolicy(["*"], ["127.0.0.1:4020"])
    open_policy.check_url("http://127.0.0.1:4020/free")
    with pytest.raises(EgressDenied, match=r"non-public address 127\.0\.0\.1"):
        open_policy.check_url("http://127.0.0.1:4021/free")
    with pytest.raises(EgressDenied, match="non-public"):
        open_policy.check_url("http://[::1]/")


@pytest.mark.parametrize("host", [
    "2130706433", "127.1", "017700000001", "0x7f000001", "0x7f.1", "[::ffff:127.0.0.1]",
    "127.0.0.1.",
])
def test_odd_ip_literals_cannot_reach_loopback(host: str) -> None:
    """aiohttp connects to these without asking the resolver; the C library reads them as
    127.0.0.1 (or they are refused as unreadable)."""
    with pytest.raises(EgressDenied):
        EgressPolicy(["*"], []).check_url(f"http://{host}:8080/")


def test_host_is_read_as_the_connection_reads_it() -> None:
    policy = EgressPolicy(["*"], [])
    with pytest.raises(EgressDenied, match="non-public"):  # ideographic full stops
        policy.check_url("http://127\u30020\u30020\u30021:8080/")
    with pytest.raises(EgressDenied, match="not a valid URL"):
        policy.check_url("http://h:99999/")


def test_payment_context_uses_the_bare_host() -> None:
    from keel.wallets.hooks import PaymentIntent
    from keel.x402.policy import pay_arguments

    args = pay_arguments(PaymentIntent("t", "a", "s", "https://x@evil.com:8443/p", "GET",
                                       "0xabc", "eip155:8453", "0xusdc", 5))
    assert (args["host"], args["port"]) == ("evil.com", 8443)
    assert "x@" not in args["resource"]
    tool = pay_arguments(PaymentIntent("t", "a", "s", "tool://market/quote", "tools/call",
                                       "0xabc", "eip155:8453", "0xusdc", 5))
    assert tool["host"] == "tool:market"


def test_requirements_valid_for_too_long_are_refused() -> None:
    from x402.schemas import PaymentRequired

    from keel.wallets.settings import X402ClientSettings
    from keel.x402.requirements import choose

    req = PaymentRequired.model_validate({
        "x402Version": 2, "resource": {"url": "https://api.example.com/r"},
        "accepts": [{"scheme": "exact", "network": "eip155:84532",
                     "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "amount": "1000",
                     "payTo": "0x" + "1" * 40, "maxTimeoutSeconds": 86_400, "extra": {}}]})
    with pytest.raises(PaymentRequirementsInvalid, match="max_validity_s"):
        choose(req, X402ClientSettings(), "api.example.com")


def test_names_that_look_hexadecimal_are_names() -> None:
    assert literal_addresses("bad.cafe") == [] and literal_addresses("cafe") == []
    assert literal_addresses("10.0.0.7") == ["10.0.0.7"]


class FixedResolver(AbstractResolver):
    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=family, proto=0,
                              flags=0) for a in self.answers]

    async def close(self) -> None:
        pass


async def test_resolver_refuses_names_that_rebind_to_private_addresses() -> None:
    policy = EgressPolicy(["*"], ["sandbox.local:*"])
    ok = GuardedResolver(policy, FixedResolver(["93.184.216.34"]))
    assert (await ok.resolve("example.com", 443))[0]["host"] == "93.184.216.34"
    rebind = GuardedResolver(policy, FixedResolver(["93.184.216.34", "10.0.0.5"]))
    with pytest.raises(EgressRefused, match=r"10\.0\.0\.5"):
        await rebind.resolve("attacker.example", 80)
    listed = GuardedResolver(policy, FixedResolver(["127.0.0.1"]))
    assert await listed.resolve("sandbox.local", 8080)


def _error_result(structured: Any = None, text: str | None = None) -> types.CallToolResult:
    content = [types.TextContent(type="text", text=text)] if text is not None else []
    return types.CallToolResult(content=content, structured_content=structured, is_error=True)


def test_payment_terms_in_tool_results() -> None:
    terms = {"x402Version": 2, "error": "pay", "resource": {"url": "mcp://tool/x"},
             "accepts": [{"scheme": "exact", "network": "eip155:84532", "asset": "0xabc",
                          "amount": "1000", "payTo": "0x" + "1" * 40,
                          "maxTimeoutSeconds": 60, "extra": {}}]}
    assert payment_required(_error_result(terms), "t").accepts[0].amount == "1000"  # type: ignore[union-attr]
    import json

    assert payment_required(_error_result(text=json.dumps(terms)), "t") is not None
    ok = types.CallToolResult(content=[], structured_content=terms, is_error=False)
    assert payment_required(ok, "t") is None  # only error results ask for money
    assert payment_required(_error_result({"detail": "boom"}), "t") is None
    assert payment_required(_error_result(text="plain failure"), "t") is None
    with pytest.raises(PaymentRequirementsInvalid, match="x402 v2 only"):
        payment_required(_error_result({**terms, "x402Version": 1}), "tool 'x'")
    with pytest.raises(PaymentRequirementsInvalid, match="malformed"):
        payment_required(_error_result({**terms, "accepts": [{"scheme": 5}]}), "tool 'x'")


@pytest.mark.parametrize("amount", [
    " 2000", "2000 ", "+2000", "2_000", "02000", "2e3", "-2000", "2000.0",
    "\u0662\u0660\u0660\u0660", "\uff12\uff10\uff10\uff10",  # Arabic-Indic, fullwidth
])
def test_only_canonical_ascii_amounts_are_paid(amount: str) -> None:
    from x402.schemas import PaymentRequired

    from keel.wallets.settings import X402ClientSettings
    from keel.x402.requirements import choose

    def offer(value: str) -> PaymentRequired:
        return PaymentRequired.model_validate({
            "x402Version": 2, "resource": {"url": "https://api.example.com/r"},
            "accepts": [{"scheme": "exact", "network": "eip155:84532",
                         "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                         "amount": value, "payTo": "0x" + "1" * 40,
                         "maxTimeoutSeconds": 60, "extra": {}}]})

    assert choose(offer("2000"), X402ClientSettings(), "h").chosen.amount == "2000"
    with pytest.raises(PaymentRequirementsInvalid, match="plain integer") as err:
        choose(offer(amount), X402ClientSettings(), "h")
    assert err.value.code == "payment_requirements_invalid"
