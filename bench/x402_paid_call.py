"""What paying costs: a paid call through keel vs an unpaid one, on loopback, same run.

Three processes on 127.0.0.1: ``keel x402 sandbox`` (the SDK's payment middleware + an
in-process facilitator on an in-memory USDC ledger), ``keel serve`` with wallets enabled
(SQLite), and this client. For each round it calls ``POST /v1/fetch`` for the sandbox's free
endpoint and for a $0.001 endpoint (402 -> budget reservation -> EIP-3009 signature ->
retry -> verify -> settle -> ledger), plus the free endpoint directly (raw baseline), and
the same for MCP tools behind keel's tool gateway (``POST /v1/tools/{name}`` to the sandbox's
paid MCP server: free ``server_time`` vs $0.001 ``define_word``). Cedar decides every
payment (``Action::"x402:pay"``), as in a default deployment.
It also times the budget check alone: the stateless pre-check (allow-list, per-call cap)
and the atomic SQL reservation (+ release) on the same SQLite file.

    .venv/bin/python bench/x402_paid_call.py --rounds 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import track
from rich.table import Table

from keel.app import build_services
from keel.config import load_settings
from keel.policy.authorizer import parse_policies
from keel.tools.gateway import ToolGateway
from keel.wallets import ledger, sessions
from keel.wallets.hooks import PaymentIntent
from keel.wallets.ledger import Hold
from keel.wallets.service import WalletService
from keel.x402.sandbox import sandbox_payee

ROOT = Path(__file__).resolve().parent.parent
KEEL = str(ROOT / ".venv" / "bin" / "keel")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "x402_paid_call.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keel-x402-bench-"))
    key = "bench-wallet-key-material-0123456789abcdef"
    sb_port, keel_port = _free_port(), _free_port()
    (tmp / "keel.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n[firewall]\nenabled = false\n[request_log]\n'
        'enabled = false\n[wallets]\nenabled = true\nencryption_key = "${KEEL_WALLET_KEY}"\n'
        f'payees = ["{sandbox_payee()}"]\nsession_budget_usd = "1000"\n'
        'daily_budget_usd = "1000"\nmax_calls_per_minute = 1000000\n'
        "max_calls_per_session = 1000000\n[wallets.x402]\n"
        'private_hosts = ["127.0.0.1:*"]\n[tools.policy]\nreload_s = 0\n'
        f'[[tools.servers]]\nname = "market"\nurl = "http://127.0.0.1:{sb_port}/mcp"\n')
    env = {**os.environ, "KEEL_WALLET_KEY": key, "KEEL_CONFIG": str(tmp / "keel.toml")}
    os.environ["KEEL_WALLET_KEY"] = key
    settings = load_settings(tmp / "keel.toml")
    svc = build_services(settings)
    wallet = svc.get(WalletService).create_wallet("bench", "agent")
    svc.get(WalletService).fund("bench", "agent", 500_000_000)
    api_key = svc.keys.create("bench", agent="agent").secret
    # budgets belong to sessions keel opened (wallets.sessions = "issued")
    for sid in ("bench", "bench-check"):
        svc.get(WalletService).open_session("bench", "agent", session_id=sid,
                                            opened_by="bench", by_agent=False)
    svc.get(ToolGateway).store.apply('permit(principal, action, resource);',
                                     validate=parse_policies)

    procs = [
        subprocess.Popen([KEEL, "x402", "sandbox", "--port", str(sb_port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([KEEL, "serve", "--port", str(keel_port), "--log-level", "warning"],
                         env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    sandbox, keel = f"http://127.0.0.1:{sb_port}", f"http://127.0.0.1:{keel_port}"
    try:
        _wait(sandbox + "/free", procs[0])
        _wait(keel + "/healthz", procs[1])
        times: dict[str, list[float]] = {"raw": [], "unpaid": [], "paid": [],
                                         "tool_free": [], "tool_paid": []}
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {api_key}"}) as c:
            def fetch(path: str) -> float:
                t = time.perf_counter()
                r = c.post(keel + "/v1/fetch", json={"url": sandbox + path,
                                                     "session_id": "bench"})
                dt = (time.perf_counter() - t) * 1000
                assert r.status_code == 200 and r.json()["status"] == 200, r.text
                return dt

            def tool(name: str, arguments: dict[str, str]) -> float:
                t = time.perf_counter()
                r = c.post(f"{keel}/v1/tools/{name}", json={"arguments": arguments},
                           headers={"x-keel-session": "bench"})
                dt = (time.perf_counter() - t) * 1000
                assert r.status_code == 200 and not r.json()["result"].get("isError"), r.text
                return dt

            for _ in range(10):  # warm-up: connections, key decryption, SDK imports
                fetch("/free")
                fetch("/weather")
                tool("server_time", {})
                tool("define_word", {"word": "w"})
            for _ in track(range(args.rounds), description="paid vs unpaid calls"):
                t = time.perf_counter()
                c.get(sandbox + "/free")
                times["raw"].append((time.perf_counter() - t) * 1000)
                times["unpaid"].append(fetch("/free"))
                times["paid"].append(fetch("/weather"))
                times["tool_free"].append(tool("server_time", {}))
                times["tool_paid"].append(tool("define_word", {"word": "w"}))

        # the budget check alone, on the same SQLite ledger
        intent = PaymentIntent("bench", "agent", "bench-check", sandbox + "/weather", "GET",
                               sandbox_payee(), "eip155:84532", "0xusdc", 1000)
        pre: list[float] = []
        reserve: list[float] = []
        for _ in range(500):
            t = time.perf_counter_ns()
            svc.get(WalletService).precheck(intent)
            pre.append((time.perf_counter_ns() - t) / 1e6)
        reserve_ledger_only: list[float] = []  # the same without the session check (baseline)
        for i in range(2 * args.rounds):
            now = time.time()
            hold = Hold("bench", "agent", wallet.id, "bench-check", intent.url, intent.payee,
                        intent.network, intent.asset, 1000,
                        svc.get(WalletService).counter_specs(intent, now), now + 60)
            with_session = i % 2 == 0

            def txn(conn: Any, h: Hold = hold, check: bool = with_session) -> str:
                # what the reservation transaction runs: the session check, then the ledger
                if check:
                    sessions.check(conn, "bench", "agent", "bench-check")
                return ledger.reserve(conn, h)

            t = time.perf_counter_ns()
            svc.db.transaction(txn)
            (reserve if with_session else reserve_ledger_only).append(
                (time.perf_counter_ns() - t) / 1e6)
            svc.db.transaction(lambda conn, h=hold: ledger.release(conn, h.id, "bench"))
        balanced = svc.db.transaction(ledger.check_books).balanced
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        asyncio.run(svc.kv.aclose())
        svc.db.dispose()

    rows = {name: {"p50_ms": statistics.median(v), "p95_ms": pct(v, 0.95),
                   "mean_ms": statistics.fmean(v)} for name, v in times.items()}
    added = rows["paid"]["p50_ms"] - rows["unpaid"]["p50_ms"]
    tool_added = rows["tool_paid"]["p50_ms"] - rows["tool_free"]["p50_ms"]
    result = {
        "rounds": args.rounds, "machine": "shared 2-core box (other agents busy)",
        "python": sys.version.split()[0], "latency": rows,
        "paid_added_p50_ms": added, "target_added_p50_ms": 60.0,
        "paid_tool_added_p50_ms": tool_added,
        "precheck_p50_ms": statistics.median(pre),
        "reservation_txn_p50_ms": statistics.median(reserve),
        "reservation_txn_p95_ms": pct(reserve, 0.95), "target_budget_check_ms": 1.0,
        "reservation_txn_without_session_check_p50_ms": statistics.median(reserve_ledger_only),
        "books_balanced": balanced,
    }
    table = Table(title=f"x402 paid call through keel ({args.rounds} rounds, loopback)")
    table.add_column("call")
    for col in ("p50 ms", "p95 ms", "mean ms"):
        table.add_column(col, justify="right")
    labels = {"raw": "sandbox /free direct (raw)", "unpaid": "keel /v1/fetch, free",
              "paid": "keel /v1/fetch, $0.001 (402->sign->settle)",
              "tool_free": "keel /v1/tools, free MCP tool", "tool_paid": "keel /v1/tools, "
              "$0.001 MCP tool (402->sign->settle)"}
    for name, r in rows.items():
        table.add_row(labels[name], f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
                      f"{r['mean_ms']:.2f}")
    console = Console()
    console.print(table)
    console.print(f"paid adds [bold]{added:.1f} ms[/] p50 (target <= 60), paid MCP tool adds "
                  f"[bold]{tool_added:.1f} ms[/]; budget pre-check "
                  f"{result['precheck_p50_ms'] * 1000:.1f} µs, atomic reservation "
                  f"{result['reservation_txn_p50_ms']:.2f} ms p50 (target <= 1; "
                  f"{result['reservation_txn_without_session_check_p50_ms']:.2f} ms without "
                  "the session check); "
                  f"books balanced: {balanced}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
