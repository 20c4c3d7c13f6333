"""Workflows bench: what the ASL interpreter costs on top of raw DBOS.

Same work both ways, sequentially, in one process on SQLite: the refund example's low-risk
path (EvaluateRisk -> Choice -> ExecuteAction: two handler calls). ``asl`` starts each
execution through ``WorkflowService.start`` (execution row, history events, validation,
DBOS workflow with one step per task); ``raw`` is a hand-written DBOS workflow calling the
same two handlers as two steps (the baseline; awaited on its handle, while the ASL side
polls the execution row every 5 ms as an API client would). Also a 50-item inline Map
(MaxConcurrency 10, each item a child workflow).
Usage: ``.venv/bin/python bench/workflows.py [--n 200]``; writes bench/results/workflows.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from keel.app import all_migrations, open_database
from keel.approvals.handlers import HandlerContext
from keel.approvals.service import ApprovalsService
from keel.config import load_settings
from keel.gateway.context import Principal
from keel.storage.migrations import migrate
from keel.workflows.examples import refund

console = Console()
REFUND = Path(__file__).resolve().parents[1] / "src/keel/workflows/examples/refund.asl.json"


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def run(n: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="keel-bench-wf-"))
    s = load_settings(None, data_dir=str(tmp / "data"))
    s.approvals.polling_interval_s = 0.02
    db = open_database(s)
    migrate(db, all_migrations())
    svc = ApprovalsService(s, db)
    from dbos import DBOS

    ctx = HandlerContext()
    holder: dict[str, Any] = {}
    register = svc._register

    def both() -> None:
        """keel's workflows plus the baseline; registered right before launch, as keel's
        are (launch destroys anything registered earlier)."""
        register()

        @DBOS.step(name="bench.risk")
        async def risk(p: dict[str, Any]) -> dict[str, Any]:
            return refund.evaluate_risk(p, ctx)

        @DBOS.step(name="bench.refund")
        async def do_refund(p: dict[str, Any]) -> dict[str, Any]:
            return refund.execute_refund(p, ctx)

        @DBOS.workflow(name="bench.raw")
        async def raw(p: dict[str, Any]) -> dict[str, Any]:
            r = await risk(p)
            if r["level"] == "HIGH":
                raise RuntimeError("not in this bench")
            return {**p, "risk": r, "refund": await do_refund(p)}

        holder["raw"] = raw

    svc._register = both  # type: ignore[method-assign]
    await svc.ensure_started()
    wf = svc.workflows
    assert wf is not None
    await wf.put("refund", REFUND.read_bytes(), "bench")
    who = Principal(key_id="bench", tenant="bench", admin=True)
    mapper = {"StartAt": "M", "States": {"M": {"Type": "Map", "MaxConcurrency": 10,
              "ItemProcessor": {"StartAt": "R", "States": {"R": {
                  "Type": "Task", "Resource": "evaluate_risk", "End": True}}}, "End": True}}}
    await wf.put("map50", json.dumps(mapper).encode(), "bench")
    out: dict[str, Any] = {}
    with Progress(console=console) as prog:
        for label in ("raw", "asl"):
            t = prog.add_task(label, total=n)
            lat: list[float] = []
            t0 = time.perf_counter()
            for i in range(n):
                data = {"order_id": f"o-{i}", "amount": 10}
                s0 = time.perf_counter()
                if label == "raw":
                    h = await DBOS.start_workflow_async(holder["raw"], data)
                    await h.get_result()
                else:  # as a client sees it: start, then poll the execution (5 ms)
                    ex = await wf.start("refund", data, who)
                    while ex.status == "RUNNING":
                        await asyncio.sleep(0.005)
                        ex = await wf.describe(ex.id, who)
                lat.append(time.perf_counter() - s0)
                prog.advance(t)
            wall = time.perf_counter() - t0
            out[label] = {"executions": n, "per_s": round(n / wall, 1),
                          "p50_ms": round(pct(lat, 0.5), 2), "p95_ms": round(pct(lat, 0.95), 2)}
        s0 = time.perf_counter()
        ex = await wf.start("map50", [{"amount": i} for i in range(50)], who)
        while ex.status == "RUNNING":
            await asyncio.sleep(0.005)
            ex = await wf.describe(ex.id, who)
        out["map50_s"] = round(time.perf_counter() - s0, 2)
    await svc.stop()
    db.dispose()
    out["asl_over_raw_ms_p50"] = round(out["asl"]["p50_ms"] - out["raw"]["p50_ms"], 2)
    out["note"] = ("SQLite (WAL) system and keel databases, one process, sequential; "
                   "taken on the shared 2-core machine under load from other agents")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    out = asyncio.run(run(args.n))
    console.print_json(json.dumps(out))
    dest = Path(__file__).resolve().parent / "results" / "workflows.json"
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()
