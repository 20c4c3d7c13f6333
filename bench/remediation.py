"""Remediation bench: the demo incident's measured timeline, canary rollback, cost.

* ``timeline``: the checkout service (examples/checkout) breaks 15% of carts; keel routes
  its traffic (``--rps``), detects, clones, gets the fix (the scripted fixer: this measures
  keel's orchestration, not a model), proves it in the sandbox, canaries it at 2% for
  ``--canary-s`` and asks for approval (approved by the bench). Reported as seconds after
  the first 5xx, plus cost: metered model USD and sandbox CPU priced at
  ``[remediation] cpu_usd_per_hour``; the reference design quotes $0.16 per remediation.
* ``rollback``: production runs the last good deploy; a bad candidate (the buggy HEAD)
  gets a 2% canary under ``--rps`` traffic with half the carts discounted. Reported: time
  from the canary start to the rollback, how long setting the weights took, failed
  requests on production (must be 0) and on the canary; baseline: the same traffic with
  no canary (production alone) in the same run.

Usage: ``.venv/bin/python bench/remediation.py [--rps 100] [--canary-s 10]``
Writes ``bench/results/remediation.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "checkout"))

import demo  # noqa: E402
from traffic import run as traffic  # noqa: E402

from keel.app import build_services, create_app  # noqa: E402
from keel.config import load_settings  # noqa: E402
from keel.gateway.background import serving  # noqa: E402
from keel.remediation.fixer import ScriptedFixer  # noqa: E402
from keel.remediation.remediator import Remediator  # noqa: E402
from keel.remediation.steps import StepFailed  # noqa: E402

console = Console()


def settings(root: Path, world: demo.World, **rem: Any) -> Any:
    return load_settings(None, data_dir=str(root / "keel"), models_dir=str(
        ROOT / ".keel" / "models"), remediation={"enabled": True, "services": [world.spec()],
                                                 **rem})


async def timeline(root: Path, rps: float, canary_s: float) -> dict[str, Any]:
    world = demo.build_world(root / "world")
    s = settings(root, world, canary_s=canary_s, canary_weight=0.02, canary_min_requests=1)
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    rm = svc.get(Remediator)
    rm.steps.fixer = ScriptedFixer(demo.SCRIPTED_FIX)
    app = create_app(s, services=svc)
    try:
        with serving(app) as base:
            counts: Counter[str] = Counter()
            job = asyncio.create_task(traffic(f"{base}/svc/checkout", rps, 3600, 0.15, 11,
                                              counts))
            async with httpx.AsyncClient(base_url=base, timeout=30, headers={
                    "authorization": f"Bearer {admin}"}) as c:
                with console.status("waiting for the incident to reach the approval"):
                    while True:
                        await asyncio.sleep(0.25)
                        incs = (await c.get("/v1/remediation/incidents")).json()["data"]
                        if incs and incs[0]["status"] == "awaiting_approval":
                            break
                        if incs and incs[0]["outcome"]:
                            raise SystemExit(f"run failed: {incs[0]['outcome']}")
                pend = (await c.get("/v1/approvals?status=pending")).json()["data"]
                await c.post(f"/v1/approvals/{pend[0]['id']}/decision",
                             json={"decision": "approve"})
                done = await rm.wait(incs[0]["id"], 120)
                full = (await c.get(f"/v1/remediation/incidents/{done.id}")).json()
            job.cancel()
    finally:
        world.stop()
    assert done.outcome is not None
    steps = {st["step"]: round(st["duration_s"], 3) for st in full["steps"]}
    return {"status": done.status, "timeline_s_after_first_5xx": done.outcome["timeline"],
            "step_durations_s": steps, "model_usd": done.outcome["model_usd"],
            "sandbox_cpu_s": done.outcome["sandbox_cpu_s"],
            "sandbox_usd": done.outcome["sandbox_usd"],
            "total_usd": done.outcome["total_usd"], "reference_usd": 0.16,
            "traffic": dict(counts), "detection": full["evidence"]["trigger"]}


async def rollback(root: Path, rps: float) -> dict[str, Any]:
    world = demo.build_world(root / "world", ref="deploy-good")
    s = settings(root, world, canary_s=30.0, canary_weight=0.02)
    svc = build_services(s)
    rm = svc.get(Remediator)
    app = create_app(s, services=svc)
    out: dict[str, Any] = {}
    try:
        with serving(app) as base:
            url = f"{base}/svc/checkout"
            base_counts = await traffic(url, rps, 5, 0.5, 1)
            out["baseline_no_canary"] = dict(base_counts)
            route = rm.router.route("checkout")
            cand = await rm.deployer.start(route.spec, world.repo, "candidate-bad")
            route.add("candidate-bad", cand.url)
            counts: Counter[str] = Counter()
            job = asyncio.create_task(traffic(url, rps, 3600, 0.5, 2, counts))
            await asyncio.sleep(2)  # steady traffic first
            t0 = time.monotonic()
            try:
                await rm.steps.step_canary("bench", "checkout", "candidate-bad")
                out["error"] = "the bad canary was not rolled back"
            except StepFailed as exc:
                out.update({k: exc.extra[k] for k in ("rollback_s", "detected_after_s",
                                                      "canary", "stable")})
                out["verdict"] = str(exc)
            out["canary_start_to_rollback_s"] = time.monotonic() - t0
            await asyncio.sleep(3)  # traffic after the rollback
            job.cancel()
            prod = route.versions["production"]
            out["production_total"] = prod.stats.total
            out["production_5xx"] = prod.stats.total_errors
            out["traffic_statuses"] = dict(counts)
    finally:
        await rm.deployer.stop_all()
        world.stop()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rps", type=float, default=100)
    ap.add_argument("--canary-s", type=float, default=10)
    a = ap.parse_args()
    result: dict[str, Any] = {"config": (
        f"checkout demo, {a.rps:.0f} req/s through keel's /svc proxy, 2% canary for "
        f"{a.canary_s:.0f}s, scripted fixer, SQLite; 2-core VM shared with other jobs "
        "(numbers taken under load)")}
    with tempfile.TemporaryDirectory(prefix="keel-rem-bench-") as d:
        result["timeline"] = await timeline(Path(d) / "t", a.rps, a.canary_s)
        console.print(result["timeline"], markup=False)
        result["rollback"] = await rollback(Path(d) / "r", a.rps)
        console.print(result["rollback"], markup=False)
    out = ROOT / "bench" / "results" / "remediation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
