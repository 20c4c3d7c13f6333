"""Tool gateway speed: Cedar authorization per decision, and /mcp overhead vs direct MCP.

Measured in one run, on 127.0.0.1:

* ``authorize``: ``Authorizer.authorize`` in process (pre-parsed policy set, schema and
  entities; the refund policy set), p50/p99 per decision over N decisions, next to the raw
  ``cedarpy.is_authorized`` call on the same pre-parsed handles (the floor);
* ``direct``: an MCP client -> the CRM MCP server over streamable HTTP (the baseline);
* ``keel``: the same client -> keel ``/mcp`` (auth, Cedar, decision log) -> the same server.

Usage::

    .venv/bin/python bench/tool_gateway.py            # 5,000 decisions, 300 calls each way
    .venv/bin/python bench/tool_gateway.py --quick

Writes ``bench/results/tool_gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cedarpy
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from rich.console import Console
from rich.table import Table

from keel.app import build_services, create_app
from keel.config import load_settings
from keel.gateway.background import serving
from keel.policy.authorizer import Authorizer, AuthzRequest
from keel.policy.schema import ToolSignature
from keel.tools.gateway import ToolGateway

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "tests" / "tool_servers" / "crm_mcp.py"
POLICY = """
@id("read-business-hours")
permit(principal, action == Action::"read_customer", resource)
when { context.now.hour >= 9 && context.now.hour < 17 };
@id("refunds") permit(principal, action == Action::"issue_refund", resource);
@id("no-refunds-over-50")
forbid(principal, action == Action::"issue_refund", resource)
when { context.amount_cents > 5000 };
"""
ARGS = {"customer_id": "c1", "amount_cents": 4999}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_authorize(n: int) -> dict[str, Any]:
    sig = ToolSignature("issue_refund", "crm", {
        "type": "object", "required": ["customer_id", "amount_cents"],
        "properties": {"customer_id": {"type": "string"}, "amount_cents": {"type": "integer"}}})
    read = ToolSignature("read_customer", "crm", {
        "type": "object", "properties": {"customer_id": {"type": "string"}}})
    authz = Authorizer([sig, read], roles={"acme/bot": ["support"]})
    authz.load(POLICY, 1)
    now = {"hour": 11, "minute": 0, "weekday": 2, "day": 3, "month": 3, "year": 2026,
           "epoch": 1772528400}
    req = AuthzRequest("bot", "acme", "issue_refund", ARGS, now)
    for _ in range(200):
        authz.authorize(req)
    keel_us = []
    for _ in range(n):
        t = time.perf_counter()
        d = authz.authorize(req)
        keel_us.append((time.perf_counter() - t) * 1e6)
    assert d.allowed
    ctx = {**ARGS, "now": now, "session": {"id": "", "spend_cents": 0}}
    raw = {"principal": {"type": "Agent", "id": "bot"},
           "action": {"type": "Action", "id": "issue_refund"},
           "resource": {"type": "Tool", "id": "issue_refund"}, "context": ctx}
    ents = authz._principal("bot", "acme")
    snap = authz.snapshot
    assert snap.policies is not None
    raw_us = []
    for _ in range(n):
        t = time.perf_counter()
        cedarpy.is_authorized(raw, snap.policies, ents, authz.schema)
        raw_us.append((time.perf_counter() - t) * 1e6)
    return {"keel_p50_us": statistics.median(keel_us), "keel_p99_us": pct(keel_us, 0.99),
            "cedarpy_p50_us": statistics.median(raw_us), "cedarpy_p99_us": pct(raw_us, 0.99),
            "decisions": n}


async def time_calls(url: str, headers: dict[str, str], n: int) -> list[float]:
    http = httpx2.AsyncClient(headers=headers)
    async with http, Client(streamable_http_client(url, http_client=http)) as c:
        for _ in range(30):
            await c.call_tool("issue_refund", ARGS)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            r = await c.call_tool("issue_refund", ARGS)
            out.append((time.perf_counter() - t) * 1e3)
            assert not r.is_error
        return out


def bench_mcp(n: int) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)],
                            stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("the MCP server did not start") from None
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(None, data_dir=tmp, firewall={"enabled": False},
                                     request_log={"enabled": False}, tools={
                                         "servers": [{"name": "crm", "url": upstream}],
                                         "policy": {"roles": {"acme/bot": ["support"]}}})
            svc = build_services(settings)
            key = svc.keys.create("acme", agent="bot").secret
            with serving(create_app(settings, services=svc)) as base:
                gw = svc.get(ToolGateway)
                gw.store.apply(POLICY, validate=gw.authorizer.validate)
                time.sleep(settings.tools.policy.reload_s + 0.5)  # the gateway picks it up

                async def both() -> tuple[list[float], list[float]]:
                    direct, via = [], []
                    for _ in range(3):  # interleave rounds so drift hits both sides
                        direct += await time_calls(upstream, {}, n // 3)
                        via += await time_calls(base + "/mcp",
                                                {"authorization": f"Bearer {key}"}, n // 3)
                    return direct, via

                direct, via = asyncio.run(both())
    finally:
        proc.terminate()
        proc.wait(10)
    d50, k50 = statistics.median(direct), statistics.median(via)
    return {"direct_p50_ms": d50, "direct_p99_ms": pct(direct, 0.99), "keel_p50_ms": k50,
            "keel_p99_ms": pct(via, 0.99), "overhead_p50_ms": k50 - d50, "calls": len(via)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    authz = bench_authorize(1000 if a.quick else 5000)
    mcp = bench_mcp(60 if a.quick else 300)
    t = Table("measure", "p50", "p99", "target")
    t.add_row("Cedar decision via keel Authorizer", f"{authz['keel_p50_us']:.1f} µs",
              f"{authz['keel_p99_us']:.1f} µs", "<= 150 µs")
    t.add_row("raw cedarpy.is_authorized (same handles)", f"{authz['cedarpy_p50_us']:.1f} µs",
              f"{authz['cedarpy_p99_us']:.1f} µs", "floor")
    t.add_row("MCP tool call, direct", f"{mcp['direct_p50_ms']:.2f} ms",
              f"{mcp['direct_p99_ms']:.2f} ms", "baseline")
    t.add_row("MCP tool call via keel /mcp", f"{mcp['keel_p50_ms']:.2f} ms",
              f"{mcp['keel_p99_ms']:.2f} ms", "")
    t.add_row("overhead of /mcp", f"{mcp['overhead_p50_ms']:.2f} ms", "", "<= 5 ms")
    Console().print(t)
    out = REPO / "bench" / "results" / "tool_gateway.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"authorize": authz, "mcp": mcp,
                               "note": "shared 2-core box, other agents busy"}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
