"""Tool gateway speed: Cedar authorization per decision, and /mcp overhead vs direct MCP.

Measured in one run, on 127.0.0.1:

* ``authorize``: ``Authorizer.authorize`` in process (pre-parsed policy set, schema and
  entities; the refund policy set), p50/p99 per decision over N decisions, next to the raw
  ``cedarpy.is_authorized`` call on the same pre-parsed handles (the floor);
* ``direct``: an MCP client -> the CRM MCP server over streamable HTTP (the baseline);
* ``keel``: the same client -> ``keel serve`` (its own process, as users run it) ``/mcp``
  -> the same server, twice: with the firewall off (auth, Cedar, decision log, request
  handling: the tool-gateway path alone) and with the shipped defaults (the firewall also
  judges every call's arguments and result). Every call has different arguments, so no
  memo answers a repeat; direct and via-keel rounds are interleaved.

Usage::

    .venv/bin/python bench/tool_gateway.py            # 5,000 decisions, 300 calls each way
    .venv/bin/python bench/tool_gateway.py --quick

Writes ``bench/results/tool_gateway.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from keel.policy.authorizer import Authorizer, AuthzRequest
from keel.policy.schema import ToolSignature

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
ROUNDS = 6  # direct and via-keel rounds, interleaved


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


def call_args(n: int) -> list[dict[str, Any]]:
    """Different arguments per call (so results differ too), as an agent's calls would:
    no memo of the firewall or anything else answers a repeat."""
    return [{"customer_id": f"c{i}", "amount_cents": 100 + i % 4800} for i in range(n)]


async def time_calls(url: str, headers: dict[str, str], args: list[dict[str, Any]]
                     ) -> list[float]:
    http = httpx2.AsyncClient(headers=headers)
    async with http, Client(streamable_http_client(url, http_client=http)) as c:
        for a in args[:30]:
            await c.call_tool("issue_refund", {**a, "customer_id": "warm-" + a["customer_id"]})
        out = []
        for a in args:
            t = time.perf_counter()
            r = await c.call_tool("issue_refund", a)
            out.append((time.perf_counter() - t) * 1e3)
            assert not r.is_error, r
        return out


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


class KeelProcess:
    """``keel serve`` in its own process (as users run it) with the CRM server as its tool
    server, the bench's policy applied and an agent key; ``firewall`` False turns the
    firewall off (the tool-gateway path alone)."""

    def __init__(self, tmp: Path, upstream: str, firewall: bool) -> None:
        self.dir = tmp / ("keel-fw" if firewall else "keel-nofw")
        self.dir.mkdir()
        cfg = self.dir / "keel.toml"
        cfg.write_text(
            f'data_dir = "{self.dir / "data"}"\n'
            + ("" if firewall else "\n[firewall]\nenabled = false\n")
            + f'\n[[tools.servers]]\nname = "crm"\nurl = "{upstream}"\n'
            + '\n[tools.policy.roles]\n"acme/bot" = ["support"]\n')
        self.env = {**os.environ, "KEEL_CONFIG": str(cfg), "NO_COLOR": "1"}
        keel = str(REPO / ".venv" / "bin" / "keel")
        made = subprocess.run([keel, "keys", "create", "--tenant", "acme", "--agent", "bot",
                               "--json"], capture_output=True, text=True, env=self.env,
                              check=True, cwd=self.dir)
        self.key = str(json.loads(made.stdout)["key"])
        policy = self.dir / "policy.cedar"
        policy.write_text(POLICY)
        subprocess.run([keel, "policy", "apply", str(policy)], capture_output=True,
                       env=self.env, check=True, cwd=self.dir)
        port = free_port()
        self.log = (self.dir / "keel.log").open("wb")
        self.proc = subprocess.Popen([keel, "serve", "--host", "127.0.0.1", "--port",
                                      str(port)], env=self.env, cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(port, self.proc, "keel serve")
        self.url = f"http://127.0.0.1:{port}/mcp"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def bench_mcp(n: int) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)],
                            stderr=subprocess.DEVNULL)
    upstream = f"http://127.0.0.1:{port}/mcp"
    out: dict[str, Any] = {}
    try:
        wait_port(port, proc, "the MCP server", 20)
        with tempfile.TemporaryDirectory() as tmp:
            for name, firewall in (("firewall_off", False), ("defaults", True)):
                keel = KeelProcess(Path(tmp), upstream, firewall)
                try:
                    out[name] = measure(upstream, keel, n)
                finally:
                    keel.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def measure(upstream: str, keel: KeelProcess, n: int) -> dict[str, Any]:
    args = call_args(n)
    per = n // ROUNDS

    async def both() -> tuple[list[float], list[float], list[float]]:
        direct, via, rounds = [], [], []
        for i in range(ROUNDS):  # interleave rounds so drift hits both sides
            chunk = args[i * per:(i + 1) * per]
            d = await time_calls(upstream, {}, chunk)
            v = await time_calls(keel.url, {"authorization": f"Bearer {keel.key}"}, chunk)
            direct += d
            via += v
            rounds.append(statistics.median(v) - statistics.median(d))
        return direct, via, rounds

    direct, via, rounds = asyncio.run(both())
    d50, k50 = statistics.median(direct), statistics.median(via)
    return {"direct_p50_ms": d50, "direct_p99_ms": pct(direct, 0.99), "keel_p50_ms": k50,
            "keel_p99_ms": pct(via, 0.99), "overhead_p50_ms": k50 - d50, "calls": len(via),
            "overhead_per_round_ms": rounds,
            "overhead_median_of_rounds_ms": statistics.median(rounds)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    authz = bench_authorize(1000 if a.quick else 5000)
    mcp = bench_mcp(60 if a.quick else 300)
    t = Table("measure", "p50", "p99 / per round", "target")
    t.add_row("Cedar decision via keel Authorizer", f"{authz['keel_p50_us']:.1f} µs",
              f"{authz['keel_p99_us']:.1f} µs", "<= 150 µs")
    t.add_row("raw cedarpy.is_authorized (same handles)", f"{authz['cedarpy_p50_us']:.1f} µs",
              f"{authz['cedarpy_p99_us']:.1f} µs", "floor")
    for name, label in (("firewall_off", "firewall off"), ("defaults", "defaults")):
        m = mcp[name]
        t.add_row(f"({label}) MCP tool call, direct", f"{m['direct_p50_ms']:.2f} ms",
                  f"{m['direct_p99_ms']:.2f} ms", "baseline")
        t.add_row(f"({label}) via keel /mcp", f"{m['keel_p50_ms']:.2f} ms",
                  f"{m['keel_p99_ms']:.2f} ms", "")
        t.add_row(f"({label}) added by /mcp", f"{m['overhead_p50_ms']:.2f} ms",
                  " ".join(f"{r:.2f}" for r in m["overhead_per_round_ms"]),
                  "<= 2 ms" if name == "firewall_off" else "")
    Console().print(t)
    out = REPO / "bench" / "results" / "tool_gateway.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"authorize": authz, "mcp": mcp,
                               "load_average": os.getloadavg()}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
