"""Approvals bench: cost of many pending approvals, and decision -> action latency.

* ``idle``: DBOS launched with 0 pending approvals (the raw baseline), then N (default
  10,000) pending approvals parked in ``DBOS.recv``: process CPU time over an idle interval,
  RSS, and the size of keel's database plus the DBOS system database (SQLite files).
* ``latency``: decision committed -> the approved action's handler starts, p50/p95, on SQLite
  (with the N approvals still pending) and on PostgreSQL 15 (started as a process with the
  test suite's helpers), in the same run.

The engine runs in this process exactly as inside the gateway (ApprovalsService).
Usage: ``.venv/bin/python bench/approvals.py [--n 10000] [--idle-s 10] [--decisions 50]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from keel.app import open_database
from keel.approvals.engine import Decider
from keel.approvals.handlers import HandlerContext
from keel.approvals.models import Proposal
from keel.approvals.service import ApprovalsService
from keel.config import load_settings

console = Console()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def idle_cpu(seconds: float) -> float:
    c0, t0 = cpu_s(), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_s() - c0) / (time.monotonic() - t0) * 100


def files_mb(d: Path) -> float:
    return sum(p.stat().st_size for p in d.glob("*.sqlite*")) / 1e6 + sum(
        p.stat().st_size for p in d.glob("keel.db*")) / 1e6


async def service(data_dir: Path, db_url: str = "", sys_url: str = ""
                  ) -> tuple[ApprovalsService, dict[str, float]]:
    s = load_settings(None, data_dir=str(data_dir), database_url=db_url or None)
    s.approvals.system_database_url = sys_url
    s.approvals.polling_interval_s = 0.05
    db = open_database(s)
    svc = ApprovalsService(s, db)
    started: dict[str, float] = {}

    def act(payload: dict[str, Any], ctx: HandlerContext) -> None:
        started[ctx.approval_id or ""] = time.perf_counter()

    svc.registry.register("bench_action", act)
    await svc.ensure_started()
    return svc, started


async def create(svc: ApprovalsService, n: int, batch: int = 100) -> list[str]:
    ids: list[str] = []
    with Progress(console=console) as bar:
        task = bar.add_task(f"creating {n:,} pending approvals", total=n)
        for i in range(0, n, batch):
            hs = await asyncio.gather(*[svc.engine.request(Proposal(
                action="bench_action", arguments={"i": j}, amount=5000.0, risk_level="HIGH"))
                for j in range(i, min(n, i + batch))])
            ids += [h.id for h in hs]
            bar.advance(task, len(hs))
    return ids


async def latency(svc: ApprovalsService, started: dict[str, float], ids: list[str]
                  ) -> list[float]:
    out = []
    for aid in ids:
        t0 = time.perf_counter()
        await svc.engine.decide("approve", Decider("bench", "api"), approval_id=aid)
        while aid not in started:
            await asyncio.sleep(0.001)
        out.append((started[aid] - t0) * 1000)
        await svc.engine.wait(aid, 10)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--decisions", type=int, default=50)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    result: dict[str, Any] = {"bench": "approvals", "n_pending": args.n,
                              "idle_s": args.idle_s, "cpus": os.cpu_count(),
                              "note": "shared 2-core box with other agents working"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        svc, started = await service(d)
        await asyncio.sleep(1.0)
        result["baseline_idle_cpu_pct"] = await idle_cpu(args.idle_s)
        result["baseline_rss_mb"] = rss_mb()
        t0 = time.monotonic()
        ids = await create(svc, args.n + args.decisions)
        result["create_per_s"] = len(ids) / (time.monotonic() - t0)
        # the last workflows are still checkpointing their first steps: wait until idle
        t0 = time.monotonic()
        while await idle_cpu(2.0) > 5 * max(result["baseline_idle_cpu_pct"], 1.0) and \
                time.monotonic() - t0 < 300:
            pass
        result["settle_s"] = time.monotonic() - t0
        result["pending_idle_cpu_pct"] = await idle_cpu(args.idle_s)
        result["pending_rss_mb"] = rss_mb()
        result["db_mb"] = files_mb(d)
        lat = await latency(svc, started, ids[: args.decisions])
        result["sqlite_p50_ms"], result["sqlite_p95_ms"] = pct(lat, 0.5), pct(lat, 0.95)
        await svc.stop()
        svc.engine.db.dispose()
    if not args.no_postgres:
        from services import running_postgres

        with running_postgres() as pg, tempfile.TemporaryDirectory() as tmp:
            url = pg.url()
            svc, started = await service(Path(tmp) / "data", url, url)
            ids = await create(svc, args.decisions + 200)
            lat = await latency(svc, started, ids[: args.decisions])
            result["postgres_p50_ms"], result["postgres_p95_ms"] = pct(lat, 0.5), pct(lat, 0.95)
            await svc.stop()
            svc.engine.db.dispose()
    t = Table("metric", "value")
    t.add_row("idle CPU, 0 pending (baseline)", f"{result['baseline_idle_cpu_pct']:.2f} %")
    t.add_row(f"idle CPU, {args.n:,} pending", f"{result['pending_idle_cpu_pct']:.2f} %")
    t.add_row("RSS 0 -> N pending", f"{result['baseline_rss_mb']:.0f} -> "
                                    f"{result['pending_rss_mb']:.0f} MB")
    t.add_row("DB size (keel.db + dbos.sqlite)", f"{result['db_mb']:.1f} MB")
    t.add_row("create throughput", f"{result['create_per_s']:.0f} /s")
    t.add_row("decision -> action, SQLite p50/p95",
              f"{result['sqlite_p50_ms']:.1f} / {result['sqlite_p95_ms']:.1f} ms (target 200)")
    if "postgres_p50_ms" in result:
        t.add_row("decision -> action, Postgres p50/p95",
                  f"{result['postgres_p50_ms']:.1f} / {result['postgres_p95_ms']:.1f} ms "
                  "(target 100)")
    console.print(t)
    out = Path(__file__).parent / "results" / "approvals.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
