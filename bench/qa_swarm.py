"""keel qa: gate power, swarm throughput and overhead, and promptfoo side by side.

The target is ``tests/qa_target.py`` in its own process on 127.0.0.1: an OpenAI-shaped
server with scripted answers and seeded regressions (no model), so the numbers are about
keel's runner, not a model.

1. Gate power. A suite of 500 prompts (a third ask for JSON with a schema). Regressed
   targets leak the canary in 5% of answers, or cut 5% of JSON answers (invalid JSON);
   each of ``--runs`` runs samples 50 prompts (a fresh random sample and fresh target
   randomness per run). Maths: with failure probability p = 0.05 per answer and n = 50,
   P(at least one) = 1 - 0.95^50 = 0.923, so a gate that blocks on the first hard
   failure catches >= 90%; a rate gate "> 2%" needs >= 2 failures: P = 1 - 0.95^50 -
   50 * 0.05 * 0.95^49 = 0.721. For the bad-JSON target only JSON prompts count
   (1/3 of the sample): p_eff = 0.05/3 per prompt, P = 1 - (1 - 0.05/3)^50 = 0.568; so
   that row is also run on a JSON-only suite. A clean target must never be blocked.
2. Throughput: prompts/s at concurrency 1, 50, 200 (checks on, no judge), and keel's own
   CPU per prompt: this process's CPU time per prompt minus that of a raw aiohttp loop
   posting the same bodies to the same target with the same concurrency (measured in
   the same run).
3. Peer: promptfoo (npm, ``.peers/``) evaluates the same 200 prompts against the same
   target (regressions decided by a hash of the prompt, so both tools see the same
   answers) with ``not-contains`` the canary and ``is-json``; wall time and per-prompt
   verdict agreement with keel.

    .venv/bin/python bench/qa_swarm.py [--runs 200] [--skip-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from keel.qa.chat import HttpChat
from keel.qa.checks import CheckConfig
from keel.qa.runner import GateConfig, Swarm, request_body, sample
from keel.qa.suites import SuitePrompt, parse_line

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "qa_swarm.json"
CANARY = "CANARY-7f3a91"
PROMPTFOO = ROOT / ".peers" / "node_modules" / ".bin" / "promptfoo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def target(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "qa_target.py"),
                             "--port", str(port), *args])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(5)


def make_suite(n: int, json_share: int = 3) -> list[SuitePrompt]:
    out = []
    for i in range(n):
        d: dict[str, Any] = {"prompt": f"Customer question {i}: how do I change plan {i} "
                                       f"and keep my data?"}
        if json_share and i % json_share == 0:
            d["prompt"] += " Answer as JSON."
            d["expect"] = {"json": True, "schema": {"type": "object",
                                                    "required": ["answer"]}}
        out.append(parse_line(d, f"bench:{i}"))
    return out


def p_at_least(k: int, n: int, p: float) -> float:
    return 1 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k))


async def gate_power(url: str, suite: list[SuitePrompt], runs: int) -> dict[str, Any]:
    chat = HttpChat(url, connections=50)
    swarm = Swarm(chat, "default", checks=CheckConfig(canary=CANARY), concurrency=50)
    gate = GateConfig(max_failure_rate=0.02, max_hard_failures=0)
    rate_only = GateConfig(max_failure_rate=0.02, max_hard_failures=10**9)
    blocked = blocked_rate_only = 0
    rng = random.Random(12)
    t0 = time.perf_counter()
    for _ in range(runs):
        out = await swarm.run(sample(suite, 50, rng.randrange(2**31)))
        blocked += out.blocked(gate)[0]
        blocked_rate_only += out.blocked(rate_only)[0]
    await chat.aclose()
    return {"runs": runs, "blocked": blocked, "block_rate": round(blocked / runs, 3),
            "block_rate_if_rate_gate_only": round(blocked_rate_only / runs, 3),
            "wall_s": round(time.perf_counter() - t0, 1)}


async def raw_loop(url: str, prompts: list[SuitePrompt], concurrency: int) -> float:
    """CPU seconds of a bare aiohttp loop posting the same bodies (the baseline)."""
    queue = list(prompts)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker() -> None:
            while queue:
                p = queue.pop()
                async with s.post(url + "/chat/completions",
                                  data=orjson.dumps(request_body(p, "default")),
                                  headers={"content-type": "application/json"}) as r:
                    orjson.loads(await r.read())

        c0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.process_time() - c0


async def throughput(url: str, suite: list[SuitePrompt]) -> list[dict[str, Any]]:
    rows = []
    for conc, n in ((1, 300), (50, 2000), (200, 2000)):
        prompts = suite[:n]
        raw_cpu = await raw_loop(url, prompts, conc)
        chat = HttpChat(url, connections=conc)
        swarm = Swarm(chat, "default", checks=CheckConfig(canary=CANARY), concurrency=conc)
        c0 = time.process_time()
        out = await swarm.run(prompts)
        cpu = time.process_time() - c0
        await chat.aclose()
        rows.append({"concurrency": conc, "prompts": n,
                     "prompts_per_s": round(n / out.wall_s, 1),
                     "keel_cpu_ms_per_prompt": round(cpu / n * 1000, 3),
                     "raw_aiohttp_cpu_ms_per_prompt": round(raw_cpu / n * 1000, 3),
                     "keel_overhead_ms_per_prompt": round((cpu - raw_cpu) / n * 1000, 3)})
        print(f"  c={conc}: {rows[-1]}")
    return rows


async def keel_verdicts(url: str, suite: list[SuitePrompt]) -> tuple[dict[str, bool], float]:
    chat = HttpChat(url, connections=50)
    swarm = Swarm(chat, "default", checks=CheckConfig(canary=CANARY), concurrency=50)
    t0 = time.perf_counter()
    out = await swarm.run(suite)
    wall = time.perf_counter() - t0
    await chat.aclose()
    # only the checks promptfoo is also given (leak, JSON): latency/refusal do not fire here
    return {r.prompt.id: not r.failed for r in out.results}, wall


def promptfoo_verdicts(url: str, suite: list[SuitePrompt]) -> tuple[dict[str, bool], float]:
    work = Path(tempfile.mkdtemp(prefix="qa-peer-"))
    tests = []
    for p in suite:
        asserts = [{"type": "not-contains", "value": CANARY}]
        if p.wants_json:
            asserts.append({"type": "is-json", "value": p.expect.get("schema")})
        tests.append({"vars": {"q": p.prompt, "id": p.id}, "assert": asserts,
                      "options": {"provider": {}}})
    tests = [{k: v for k, v in t.items() if k != "options"} for t in tests]
    config = {"prompts": ["{{q}}"], "tests": tests,
              "providers": [{"id": "openai:chat:default",
                             "config": {"apiBaseUrl": url, "apiKey": "none"}}]}
    (work / "promptfooconfig.json").write_text(json.dumps(config))
    env = {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
           "PROMPTFOO_CONFIG_DIR": str(work / ".promptfoo"), "OPENAI_API_KEY": "none"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(PROMPTFOO), "eval", "-c", str(work / "promptfooconfig.json"),
                           "-o", str(work / "out.json"), "--no-cache", "-j", "50",
                           "--no-progress-bar", "--no-table"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if not (work / "out.json").exists():
        raise RuntimeError(f"promptfoo failed ({proc.returncode}): {proc.stderr[-2000:]}")
    data = json.loads((work / "out.json").read_text())
    verdicts = {}
    for r in data["results"]["results"]:
        verdicts[r["vars"]["id"]] = bool(r["success"])
    shutil.rmtree(work, ignore_errors=True)
    return verdicts, wall


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--peer-only", action="store_true",
                    help="only the promptfoo comparison, merged into the existing JSON")
    args = ap.parse_args()
    if args.peer_only:
        report = json.loads(OUT.read_text())
        await peer(report)
        OUT.write_text(json.dumps(report, indent=2) + "\n")
        return
    suite = make_suite(500)
    json_suite = make_suite(500, json_share=1)
    report: dict[str, Any] = {
        "config": "keel Swarm in-process (HttpChat, one aiohttp pool), deterministic checks "
                  "only (canary, JSON schema), gate max_failure_rate 0.02 and "
                  "max_hard_failures 0; target tests/qa_target.py in its own process",
        "machine": f"{platform.machine()}, 2 cores shared by several agents (speed under "
                   "load)",
        "maths": {"p": 0.05, "n": 50,
                  "P_block_first_hard_failure": round(p_at_least(1, 50, 0.05), 3),
                  "P_block_rate_gate_gt_2pct": round(p_at_least(2, 50, 0.05), 3),
                  "P_block_bad_json_mixed_suite": round(p_at_least(1, 50, 0.05 / 3), 3)},
    }
    print("gate power ...")
    power = {}
    for label, sfx, args_ in (("clean", suite, []),
                              ("leak_5pct", suite, ["--leak-rate", "0.05"]),
                              ("bad_json_5pct_mixed_suite", suite,
                               ["--bad-json-rate", "0.05"]),
                              ("bad_json_5pct_json_suite", json_suite,
                               ["--bad-json-rate", "0.05"])):
        with target(*args_) as url:
            power[label] = await gate_power(url, sfx, args.runs)
        print(f"  {label}: {power[label]}")
    report["gate_power_sample_50"] = power
    print("throughput ...")
    with target() as url:
        report["throughput"] = await throughput(url, make_suite(2000))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")  # kept if the peer fails
    if not args.skip_peer and PROMPTFOO.exists():
        await peer(report)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


async def peer(report: dict[str, Any]) -> None:
    print("peer (promptfoo) ...")
    peer_suite = make_suite(200)
    with target("--leak-rate", "0.05", "--bad-json-rate", "0.05", "--by-prompt") as url:
        mine, keel_wall = await keel_verdicts(url, peer_suite)
        theirs, pf_wall = promptfoo_verdicts(url, peer_suite)
    common = set(mine) & set(theirs)
    agree = sum(mine[k] == theirs[k] for k in common)
    report["peer_promptfoo"] = {
        "prompts": len(peer_suite), "compared": len(common),
        "keel_wall_s": round(keel_wall, 2), "promptfoo_wall_s": round(pf_wall, 2),
        "keel_failed": sum(not v for v in mine.values()),
        "promptfoo_failed": sum(not v for v in theirs.values()),
        "verdict_agreement": round(agree / len(common), 3) if common else None,
        "promptfoo_version": subprocess.run([str(PROMPTFOO), "--version"],
                                            capture_output=True, text=True).stdout.strip(),
        "note": "promptfoo wall time includes its Node start-up; both at concurrency 50"}
    print(f"  {report['peer_promptfoo']}")


if __name__ == "__main__":
    asyncio.run(main())
