"""A traffic spike through the gateway on loopback: the breaker trips, spend flattens, heals.

A scripted fake upstream (aiohttp on 127.0.0.1, 15 ms per call) reports usage from the
request: prompt tokens = prompt chars / 4, completion tokens = max_tokens. The ladder
serves "big" ($2.50 / $10 per 1M) at DEEP and "small" ($0.15 / $0.60, max_tokens 64) at
SHALLOW, so every dollar is metered by keel from real usage and the configured prices.
Alarms (10 s windows, 2 s evaluation period): spend > $150/h (OK below $75/h) and
invocations > 900/min (OK below 450/min), global. Traffic: 5 req/s for 20 s, 30 req/s for
40 s, 5 req/s for 45 s (~105 s in all). The raw baseline is the same traffic on the same
gateway with the ladder pinned to DEEP, measured in the same run (spend it would have cost).

Usage (repo root)::  .venv/bin/python bench/degrade_spike.py [--scale 1.0]
Writes ``bench/results/degrade_spike.json`` and ``bench/results/degrade_spike.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import onnxruntime  # noqa: F401  (native runtimes load on the main thread)
from aiohttp import web
from rich.console import Console
from rich.table import Table

from keel.app import build_services, create_app
from keel.config import Settings, load_settings
from keel.degrade.service import Degrader
from keel.gateway.background import serving

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Summarise the incident report in three bullet points. " * 36  # ~2k chars
PHASES = [(20.0, 5.0), (40.0, 30.0), (45.0, 5.0)]  # (seconds, requests per second)
PERIOD_S = 2.0
WINDOW_S = 10.0
SPEND_THRESHOLD, SPEND_OK = 150.0, 75.0
CALLS_THRESHOLD, CALLS_OK = 900.0, 450.0


def start_fake_upstream() -> tuple[str, Any]:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(0.015)
        chars = sum(len(m.get("content") or "") for m in body["messages"])
        usage = {"prompt_tokens": chars // 4, "completion_tokens": int(body.get("max_tokens")
                                                                       or 300)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return web.json_response({
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": usage})

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(site._server.sockets[0].getsockname()[1])
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return f"http://127.0.0.1:{port[0]}/v1", loop


def settings_for(data_dir: Path, upstream: str) -> Any:
    models = [
        {"name": "big", "upstream": "gpt-big", "base_url": upstream, "api_key": "sk-x",
         "input_usd_per_1m": 2.5, "output_usd_per_1m": 10.0},
        {"name": "small", "upstream": "gpt-small", "base_url": upstream, "api_key": "sk-x",
         "input_usd_per_1m": 0.15, "output_usd_per_1m": 0.6},
    ]
    degrade = {
        "period_s": PERIOD_S, "bucket_s": 1.0, "refresh_s": 0.25,
        "levels": [{"name": "deep", "max_tokens": 300, "models": {"big": "big"}},
                   {"name": "shallow", "max_tokens": 64, "models": {"big": "small"}}],
        "alarms": [
            {"metric": "spend_usd_per_hour", "threshold": SPEND_THRESHOLD,
             "recover_below": SPEND_OK, "window_s": WINDOW_S, "evaluation_periods": 1,
             "recovery_periods": 3},
            {"metric": "invocations_per_minute", "threshold": CALLS_THRESHOLD,
             "recover_below": CALLS_OK, "window_s": WINDOW_S, "evaluation_periods": 1,
             "recovery_periods": 3},
        ]}
    extra: dict[str, Any] = {}
    if "cache" in Settings.model_fields:  # every prompt is unique anyway; keep it out
        extra["cache"] = {"enabled": False}
    return load_settings(None, data_dir=str(data_dir), models=models, degrade=degrade,
                         auth_required=False, firewall={"enabled": False},
                         models_dir=str(ROOT / ".keel" / "models"), **extra)


async def drive(base: str, scale: float) -> list[dict[str, Any]]:
    """Open-loop traffic: requests start on schedule whatever the latency."""
    records: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http:
        async def one(t_start: float) -> None:
            body = {"model": "big", "max_tokens": 300, "messages": [
                {"role": "user", "content": f"Ticket {t_start:.3f}. {PROMPT}"}]}
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"t": t_start}
            try:
                async with http.post(f"{base}/v1/chat/completions", json=body) as r:
                    await r.read()
                    rec.update(status=r.status, mode=r.headers.get("x-keel-mode", "?"),
                               cost=float(r.headers.get("x-keel-cost-usd", 0)))
            except aiohttp.ClientError as exc:
                rec.update(status=0, mode="?", cost=0.0, error=str(exc))
            rec["latency_ms"] = (time.perf_counter() - t0) * 1000
            records.append(rec)

        tasks = []
        start = time.perf_counter()
        at = 0.0
        for seconds, rps in PHASES:
            end = at + seconds * scale
            while at < end:
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(at)))
                at += 1.0 / rps
        await asyncio.gather(*tasks)
    return records


def rolling_spend_per_hour(records: list[dict[str, Any]], t: float) -> float:
    window = [r["cost"] for r in records if t - WINDOW_S < r["t"] <= t]
    return sum(window) * 3600 / WINDOW_S


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="stretch or shrink the phases")
    args = ap.parse_args()
    console = Console()
    upstream, up_loop = start_fake_upstream()
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), upstream)
        svc = build_services(settings)
        app = create_app(settings, services=svc)
        with serving(app) as base:
            t0 = time.time()
            records = asyncio.run(drive(base, args.scale))
            wall = time.time() - t0
            read = svc.get(Degrader).flags.level_for
            n = 1_000_000
            t1 = time.perf_counter()
            for _ in range(n):
                read("acme")
            level_read_ns = (time.perf_counter() - t1) / n * 1e9
            flips = [{"t": f.ts - t0, "from": f.from_level, "to": f.to_level, "reason": f.reason}
                     for f in reversed(svc.db.transaction(lambda c: __import__(
                         "keel.degrade.audit", fromlist=["recent"]).recent(c, 100)))]
    up_loop.call_soon_threadsafe(up_loop.stop)

    records.sort(key=lambda r: r["t"])
    failures = [r for r in records if r["status"] != 200]
    spike_start, spike_end = PHASES[0][0] * args.scale, (PHASES[0][0] + PHASES[1][0]) * args.scale
    # when the alarm condition first held (client-side metered spend or call rate over 10 s)
    breach_t = next((r["t"] for r in records if r["t"] >= spike_start and (
        rolling_spend_per_hour(records, r["t"]) > SPEND_THRESHOLD
        or sum(1 for x in records if r["t"] - WINDOW_S < x["t"] <= r["t"]) * 60 / WINDOW_S
        > CALLS_THRESHOLD)), None)
    trip = next((f for f in flips if f["to"] == "SHALLOW"), None)
    heal = next((f for f in flips if f["to"] == "DEEP"), None)
    deep_cost = next((r["cost"] for r in records if r["mode"] == "DEEP"), 0.0)
    baseline_usd = deep_cost * len(records)  # the same traffic pinned to DEEP
    spent = sum(r["cost"] for r in records)
    grid = [i * 0.5 for i in range(int(records[-1]["t"] * 2) + 1)]
    spend_curve = [rolling_spend_per_hour(records, t) for t in grid]
    shallow_from = next((r["t"] for r in records if r["mode"] == "SHALLOW"), None)
    peak_after = max((s for t, s in zip(grid, spend_curve, strict=True)
                      if shallow_from is not None and shallow_from + 1 <= t <= spike_end),
                     default=0.0)
    at_trip = rolling_spend_per_hour(records, shallow_from) if shallow_from else 0.0
    res = {
        "requests": len(records), "failures": len(failures), "wall_s": wall,
        "phases": PHASES, "scale": args.scale, "period_s": PERIOD_S, "window_s": WINDOW_S,
        "breach_at_s": breach_t, "trip_at_s": trip["t"] if trip else None,
        "trip_delay_s": (trip["t"] - breach_t) if trip and breach_t is not None else None,
        "first_shallow_response_s": shallow_from,
        "heal_at_s": heal["t"] if heal else None, "spike_end_s": spike_end,
        "flips": flips, "flip_count": len(flips),
        "spend_per_hour_at_trip": at_trip, "spend_per_hour_peak_after_trip": peak_after,
        "spent_usd": spent, "baseline_all_deep_usd": baseline_usd,
        "level_read_ns": level_read_ns,
        "latency_ms_p50": sorted(r["latency_ms"] for r in records)[len(records) // 2],
        "machine": f"{platform.machine()}, {platform.python_version()}, shared busy 2-core box",
    }
    (ROOT / "bench" / "results" / "degrade_spike.json").write_text(json.dumps(res, indent=2))
    try:
        plot(records, grid, spend_curve, flips, ROOT / "bench" / "results" / "degrade_spike.png")
    except ImportError:
        console.print("matplotlib is not installed: no PNG (pip install -e '.[dev]')")
    t = Table(title="degrade spike (loopback, scripted fake upstream with prices)")
    t.add_column("measure")
    t.add_column("value")
    for k in ("requests", "failures", "breach_at_s", "trip_at_s", "trip_delay_s",
              "spend_per_hour_at_trip", "spend_per_hour_peak_after_trip", "spike_end_s",
              "heal_at_s", "flip_count", "spent_usd", "baseline_all_deep_usd",
              "latency_ms_p50", "level_read_ns"):
        v = res[k]
        t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(t)
    for f in flips:
        console.print(f"  t={f['t']:6.1f}s {f['from']} -> {f['to']}: {f['reason']}")


def plot(records: list[dict[str, Any]], grid: list[float], spend: list[float],
         flips: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    a1.plot(grid, spend, color="tab:red")
    a1.axhline(SPEND_THRESHOLD, ls="--", color="gray", label="threshold")
    a1.axhline(SPEND_OK, ls=":", color="gray", label="recover below")
    a1.set_ylabel("spend USD/hour\n(10 s window)")
    a1.legend(loc="upper right")
    levels = {"DEEP": 0, "SHALLOW": 1}
    a2.step([r["t"] for r in records], [levels.get(r["mode"], -1) for r in records],
            where="post")
    a2.set_yticks([0, 1], ["DEEP", "SHALLOW"])
    a2.invert_yaxis()
    a2.set_ylabel("x-keel-mode")
    for f in flips:
        for ax in (a1, a2, a3):
            ax.axvline(f["t"], color="tab:purple", alpha=0.3)
    a3.scatter([r["t"] for r in records], [r["latency_ms"] for r in records], s=2)
    a3.set_ylabel("latency ms")
    a3.set_xlabel("seconds")
    fig.suptitle("keel spend circuit breaker: traffic spike 5 -> 30 -> 5 req/s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
