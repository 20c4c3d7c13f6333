"""kill -9 a real `keel serve` in the middle of a 50-sample reasoning run; after a restart
the run completes, and no sample that had finished is requested again (the loopback
upstream logs every request it gets, in another process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from test_approvals_durability import kill9, start

from fakes import free_port

UPSTREAM = Path(__file__).resolve().parents[1] / "reasoning_upstream.py"
N = 50


def requests_by_seed(log: Path) -> Counter[int]:
    out: Counter[int] = Counter()
    if log.exists():
        for line in log.read_text().splitlines():
            key = json.loads(line)["key"]
            if key.startswith("worker:"):
                out[int(key.split(":")[1])] += 1
    return out


def get_run(base: str, h: dict[str, str], run_id: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/reasoning/runs/{run_id}", headers=h, timeout=30)
    r.raise_for_status()
    return dict(r.json())


def test_kill9_mid_run_resumes_without_requesting_finished_samples_again(
        tmp_path: Path) -> None:
    up_port = free_port()
    log = tmp_path / "upstream.jsonl"
    upstream = subprocess.Popen([sys.executable, str(UPSTREAM), "--port", str(up_port),
                                 "--delay", "0.4", "--log", str(log)],
                                cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'''data_dir = "{tmp_path / 'data'}"
[firewall]
semantic = false
[approvals]
polling_interval_s = 0.05
[[models]]
name = "cheap"
provider = "openai"
base_url = "http://127.0.0.1:{up_port}/v1"
api_key = "sk-x"
input_usd_per_1m = 1.0
output_usd_per_1m = 2.0
[[reasoners]]
name = "deep"
workers = ["cheap"]
n = {N}
max_concurrency = 5
worker_max_tokens = 64
judge_max_tokens = 256
''')
    env = {**os.environ, "KEEL_CONFIG": str(cfg)}
    proc, base = start(tmp_path, env)
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    h = {"Authorization": f"Bearer {key}"}
    try:
        r = httpx.post(f"{base}/v1/reasoning/runs", headers=h, timeout=30,
                       json={"reasoner": "deep", "question": "What is 6 x 7?"})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while True:  # about a third of the samples done: kill -9 the gateway
            run = get_run(base, h, run_id)
            if run["samples_by_status"].get("ok", 0) >= 15:
                break
            assert time.monotonic() < deadline, run
            time.sleep(0.05)
        kill9(proc)
        before = requests_by_seed(log)
        done_before = {s["index"] for s in get_run_offline(tmp_path, run_id)
                       if s["status"] == "ok"}
        assert 15 <= len(done_before) < N
        proc, base = start(tmp_path, env)
        deadline = time.monotonic() + 120
        while True:
            run = get_run(base, h, run_id)
            if run["status"] in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, run["samples_by_status"]
            time.sleep(0.1)
        assert run["status"] == "succeeded", run["error"]
        assert run["samples_by_status"] == {"ok": N}
        after = requests_by_seed(log)
        assert set(after) == set(range(N))
        # a sample recorded before the kill is never requested again ...
        assert all(after[i] == 1 for i in done_before), {i: after[i] for i in done_before}
        # ... only those in flight at the kill (at most max_concurrency) are asked twice
        again = {i for i, c in after.items() if c > 1}
        assert again <= set(before) - done_before and len(again) <= 5
        assert sum(after.values()) <= N + 5
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=30)
        upstream.terminate()
        upstream.wait(timeout=10)


def get_run_offline(tmp_path: Path, run_id: str) -> list[dict[str, Any]]:
    """The run's samples read from the database while no gateway runs."""
    import sqlite3

    with sqlite3.connect(tmp_path / "data" / "keel.db") as c:
        rows = c.execute("select idx, status from reasoning_samples where run_id = ?",
                         (run_id,)).fetchall()
    return [{"index": i, "status": s} for i, s in rows]
