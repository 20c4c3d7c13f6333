"""kill -9 a real `keel qa run --durable` in the middle of a 120-prompt swarm; a restarted
keel (`keel serve` with QA on, sharing the data dir) recovers the run, which completes
with every prompt evaluated exactly once, and no prompt whose result had been stored is
sent to the target again (the loopback target, its own process, counts the requests it
gets per prompt)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
from test_approvals_durability import KEEL, start

from fakes import free_port

TARGET = Path(__file__).resolve().parents[1] / "qa_target.py"
N = 120
CONCURRENCY = 3  # per batch; the swarm queue runs 4 batches at once per process
IN_FLIGHT = 4 * CONCURRENCY


def db_rows(data: Path, sql: str) -> list[tuple[object, ...]]:
    if not (data / "keel.db").exists():
        return []
    c = sqlite3.connect(data / "keel.db", timeout=30)
    try:
        return list(c.execute(sql))
    except sqlite3.OperationalError:  # tables not made yet
        return []
    finally:
        c.close()


def target_counts(port: int) -> dict[str, int]:
    r = httpx.get(f"http://127.0.0.1:{port}/counts", timeout=10)
    r.raise_for_status()
    return dict(r.json())


def test_kill9_mid_durable_run_resumes_without_asking_finished_prompts_again(
        tmp_path: Path) -> None:
    port = free_port()
    target = subprocess.Popen([sys.executable, str(TARGET), "--port", str(port),
                               "--delay", "0.4"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    data = tmp_path / "data"
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{data}"\n[firewall]\nsemantic = false\n[tools]\n'
                   'enabled = false\n[approvals]\npolling_interval_s = 0.05\n[qa]\n'
                   'enabled = true\n')
    suite = tmp_path / "suite.jsonl"
    prompts = [f"Question {i}: how do I move invoice {i} to another plan?" for i in range(N)]
    suite.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    env = {**os.environ, "KEEL_CONFIG": str(cfg)}
    base_url = f"http://127.0.0.1:{port}/v1"
    gateway = None
    run = subprocess.Popen([KEEL, "qa", "run", "--durable", "--suite", str(suite),
                            "--target", base_url, "--sample", "all", "--concurrency",
                            str(CONCURRENCY), "--quiet"], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # about a quarter of the prompts stored: kill -9 the run's process
            done = db_rows(data, "select count(*) from qa_results")
            if done and int(str(done[0][0])) >= 30:
                break
            out = run.stdout.read().decode() if run.poll() is not None and run.stdout else ""
            assert run.poll() is None, f"the run ended before the kill: {out}"
            assert time.monotonic() < deadline, "the run stored no results"
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
        (run_id, status), = db_rows(data, "select id, status from qa_runs")
        assert status == "running"
        done_before = {str(p) for (p,) in db_rows(
            data, f"select prompt from qa_results where run_id = '{run_id}'")}
        asked_before = target_counts(port)
        assert 30 <= len(done_before) < N, len(done_before)
        assert all(asked_before.get(p) == 1 for p in done_before)

        gateway, _ = start(tmp_path, env)  # the restart: recovers the dead run's workflows
        deadline = time.monotonic() + 120
        while True:
            (status,), = db_rows(data, f"select status from qa_runs where id = '{run_id}'")
            if status != "running":
                break
            assert time.monotonic() < deadline, db_rows(data, "select count(*) from "
                                                              "qa_results")
            time.sleep(0.1)
        assert status == "passed"
        rows = db_rows(data, f"select prompt, outcome from qa_results where run_id = "
                             f"'{run_id}'")
        # every prompt evaluated exactly once in the results ...
        assert sorted(str(p) for p, _ in rows) == sorted(prompts)
        assert {o for _, o in rows} == {"pass"}
        summary = json.loads(str(db_rows(
            data, f"select summary from qa_runs where id = '{run_id}'")[0][0]))
        assert summary["counts"]["passed"] == N and summary["gate"] == "passed"
        # ... every prompt asked, none whose result was stored asked again ...
        after = target_counts(port)
        assert set(after) == set(prompts)
        assert all(after[p] == 1 for p in done_before), {
            p: after[p] for p in done_before if after[p] != 1}
        # ... only those in flight at the kill (at most 4 batches x concurrency) twice
        again = {p for p, c in after.items() if c > 1}
        assert again <= set(asked_before) - done_before, again
        assert len(again) <= IN_FLIGHT and max(after.values()) <= 2, again
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
        if gateway is not None and gateway.poll() is None:
            gateway.terminate()
            gateway.communicate(timeout=30)
        target.terminate()
        target.wait(timeout=10)
