"""Scatter-gather orchestration cost: keel vs a raw asyncio fan-out vs optillm, same
loopback upstream, same N; then a 500-sample tournament with an 8k-token judge.

The upstream (``tests/reasoning_upstream.py``, a real aiohttp server in its own process)
answers every worker call after a fixed delay L and every judge call (a request with
``response_format``) after J; every request is logged, so calls are counted, not assumed.

* raw: aiohttp, a semaphore of C, N worker calls then one judge call (the floor);
* keel: ``POST /v1/chat/completions`` with ``model = "reasoner/bench"`` through the ASGI app
  (the whole gateway pipeline per sample: auth, firewall regex rules, metering, request
  log; DBOS queue fan-out; SQLite run store). Target: wall <= 2 L + J + 100 ms at N = 50,
  C = 25; CPU per sample = the process's CPU time over the run / (N + judge calls), also
  without the process's idle CPU (DBOS queue/notification polling, measured for 3 s
  before the runs) -- the runs' own cost; medians over the reps;
  memory per running sample = tracemalloc peak over the run / C (a separate run);
* optillm 0.4 best-of-n (one request with ``n = N``, then one rating call per answer, in
  sequence) and mixture-of-agents (fixed at 3 samples), run from ``.optillm-venv``
  (created on first use: ``pip install --no-deps optillm==0.4.0 openai``).

Usage: ``.venv/bin/python bench/reasoning_speed.py [--delay 0.5 --judge-delay 0.3]``.
Writes ``bench/results/reasoning_speed.json``. The machine is shared: CPU numbers are
taken under load.
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
import tracemalloc
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from fakes import free_port  # noqa: E402

OPTILLM_VENV = REPO / ".optillm-venv"
RESULTS = REPO / "bench" / "results" / "reasoning_speed.json"
IDLE_S = 3.0


class Upstream:
    def __init__(self, delay: float, judge_delay: float, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / f"upstream-{self.port}.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "reasoning_upstream.py"), "--port",
             str(self.port), "--delay", str(delay), "--judge-delay", str(judge_delay),
             "--log", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{self.base_url}/chat/completions", json={"model": "x",
                           "messages": []}, timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "upstream did not start"
                time.sleep(0.1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count(self) -> dict[str, int]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        keys = [json.loads(x)["key"] for x in lines]
        return {"worker": sum(k.startswith("worker") for k in keys),
                "judge": sum(k == "judge" for k in keys)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def raw(base: str, n: int, c: int) -> float:
    sem = asyncio.Semaphore(c)
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> str:
            async with sem, s.post(f"{base}/chat/completions", json={
                    "model": "cheap", "seed": i, "messages": [
                        {"role": "user", "content": "What is 6 x 7?"}]}) as r:
                return str((await r.json())["choices"][0]["message"]["content"])
        t0 = time.perf_counter()
        answers = await asyncio.gather(*(one(i) for i in range(n)))
        schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
        async with s.post(f"{base}/chat/completions", json={
                "model": "strong", "response_format": {"type": "json_schema", "json_schema": {
                    "name": "v", "schema": schema}},
                "messages": [{"role": "user", "content": "\n".join(answers)}]}) as r:
            await r.json()
        return time.perf_counter() - t0


def settings(tmp: Path, up: Upstream, reasoners: list[dict[str, Any]]) -> Any:
    from keel.config import load_settings

    models = [{"name": n, "provider": "openai", "base_url": up.base_url, "api_key": "sk-b",
               "input_usd_per_1m": pi, "output_usd_per_1m": po, "context": 8192}
              for n, pi, po in (("cheap", 0.25, 1.25), ("strong", 3.0, 15.0))]
    s = load_settings(None, data_dir=str(tmp / f"data-{up.port}-{len(reasoners)}"),
                      models=models, reasoners=reasoners)
    s.firewall.semantic = False  # regex rules only: the MiniLM pass is measured elsewhere
    return s  # everything else at its defaults (queue and listener polling included)


@asynccontextmanager
async def keel_client(s: Any) -> Any:
    from keel.app import build_services, create_app

    svc = build_services(s)
    key = svc.keys.create("bench", agent="reasoner-bench").secret
    app = create_app(s, services=svc)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://keel", timeout=600,
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            yield c


async def ask(c: httpx.AsyncClient, model: str, n: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [
        {"role": "user", "content": "What is 6 x 7?"}]}
    if n is not None:
        body["keel_reasoning"] = {"n": n}
    r = await c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def keel_runs(s: Any, n: int, reps: int) -> dict[str, Any]:
    async with keel_client(s) as c:
        await ask(c, "reasoner/bench", 2)  # warm-up: DBOS launch, connections
        await ask(c, "reasoner/bench")
        # what the process burns with nothing to do (DBOS's queue and notification
        # polling of every capability), subtracted to get the runs' own CPU
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(IDLE_S)
        idle_rate = (time.process_time() - cpu0) / (time.perf_counter() - t0)
        walls, cpus, infos = [], [], []
        for _ in range(reps):
            cpu0, t0 = time.process_time(), time.perf_counter()
            out = await ask(c, "reasoner/bench")
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - cpu0)
            infos.append(out["keel_reasoning"])
        tracemalloc.start()
        base_mem = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await ask(c, "reasoner/bench")
        peak = tracemalloc.get_traced_memory()[1] - base_mem
        tracemalloc.stop()
    calls = n + infos[-1]["judge_calls"]
    own = [cpu - idle_rate * wall for cpu, wall in zip(cpus, walls, strict=True)]
    return {"wall_s": walls, "cpu_s": cpus, "best_wall_s": min(walls),
            "median_wall_s": statistics.median(walls),
            "cpu_ms_per_call": 1000 * statistics.median(cpus) / calls,
            "idle_cpu_share": idle_rate,
            "own_cpu_ms_per_call": 1000 * statistics.median(own) / calls,
            "judge_calls": infos[-1]["judge_calls"],
            "cost_usd": infos[-1]["cost_usd"], "peak_traced_bytes": peak}


def optillm(base: str, approach: str, n: int) -> dict[str, Any]:
    py = OPTILLM_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(OPTILLM_VENV)], check=True)
        subprocess.run([str(OPTILLM_VENV / "bin" / "pip"), "install", "-q", "--no-deps",
                        "optillm==0.4.0"], check=True)
        subprocess.run([str(OPTILLM_VENV / "bin" / "pip"), "install", "-q", "openai"],
                       check=True)
    out = subprocess.run([str(py), str(REPO / "bench" / "optillm_runner.py"), "--base-url",
                          base, "--approach", approach, "--n", str(n)], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.5)
    ap.add_argument("--judge-delay", type=float, default=0.3)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=25)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tournament-n", type=int, default=500)
    ap.add_argument("--skip-optillm", action="store_true")
    a = ap.parse_args()
    L, J, N, C = a.delay, a.judge_delay, a.n, a.concurrency
    tmp = Path(tempfile.mkdtemp(prefix="reasoning-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result: dict[str, Any] = {"config": {"L_s": L, "J_s": J, "N": N, "max_concurrency": C,
                                         "machine": "2 shared cores",
                                         "load_average_at_start": os.getloadavg()}}
    up = Upstream(L, J, tmp)
    try:
        walls = [await raw(up.base_url, N, C) for _ in range(a.reps)]
        result["raw"] = {"best_wall_s": min(walls), "wall_s": walls,
                         "requests": up.count()}
        print(f"raw asyncio fan-out: {min(walls):.3f} s (ideal 2L+J = {2 * L + J:.3f} s)")
        before = up.count()
        s = settings(tmp, up, [{"name": "bench", "workers": ["cheap"], "judge": "strong",
                                "n": N, "max_concurrency": C, "worker_max_tokens": 64,
                                "judge_max_tokens": 512}])
        k = await keel_runs(s, N, a.reps)
        after = up.count()
        k["requests"] = {x: after[x] - before[x] for x in after}
        target = 2 * L + J + 0.1
        k["target_s"] = target
        k["meets_target"] = k["best_wall_s"] <= target
        k["overhead_vs_raw_ms_per_sample"] = 1000 * (k["best_wall_s"]
                                                     - result["raw"]["best_wall_s"]) / N
        k["bytes_per_running_sample"] = k["peak_traced_bytes"] / C
        result["keel"] = k
        print(f"keel reasoner: best {k['best_wall_s']:.3f} s, median "
              f"{k['median_wall_s']:.3f} s (target {target:.3f} s: "
              f"{'met' if k['meets_target'] else 'MISSED'}), CPU "
              f"{k['cpu_ms_per_call']:.2f} ms per model call (process), "
              f"{k['own_cpu_ms_per_call']:.2f} ms without the idle polling "
              f"({100 * k['idle_cpu_share']:.1f}% of a core), "
              f"{k['bytes_per_running_sample'] / 1024:.0f} KiB traced per running sample, "
              f"judge calls {k['judge_calls']}, cost ${k['cost_usd']:.6f}")
        if not a.skip_optillm:
            for approach, n in (("bon", N), ("moa", 3)):
                b = up.count()
                o = optillm(up.base_url, approach, n)
                e = up.count()
                o["requests"] = {x: e[x] - b[x] for x in e}
                o["N"] = n
                result[f"optillm_{approach}"] = o
                print(f"optillm {approach} (N={n}): {o['wall_s']:.3f} s, "
                      f"{o['requests']} requests, completion tokens {o['completion_tokens']}")
    finally:
        up.stop()
    # tournament: 500 short answers, judge context 8k
    up = Upstream(0.05, 0.05, tmp)
    try:
        s = settings(tmp, up, [{"name": "bench", "workers": ["cheap"], "judge": "strong",
                                "n": a.tournament_n, "max_n": a.tournament_n,
                                "max_concurrency": 50, "worker_max_tokens": 32,
                                "judge_max_tokens": 1024, "group_size": 50}])
        async with keel_client(s) as c:
            t0 = time.perf_counter()
            out = await ask(c, "reasoner/bench")
            wall = time.perf_counter() - t0
        info = out["keel_reasoning"]
        result["tournament"] = {"N": a.tournament_n, "judge_context": 8192,
                                "group_size": 50, "survivors": 2, "wall_s": wall,
                                "judge_calls": info["judge_calls"],
                                "cost_usd": info["cost_usd"], "requests": up.count()}
        print(f"tournament N={a.tournament_n}, judge context 8192: {info['judge_calls']} "
              f"judge calls, cost ${info['cost_usd']:.6f}, {wall:.2f} s")
    finally:
        up.stop()
    result["config"]["load_average_at_end"] = os.getloadavg()
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    asyncio.run(main())
