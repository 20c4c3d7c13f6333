"""kill -9 a real `keel serve` with 100 pending approvals; restart; approve them all: each
action runs exactly once (the action appends to a SQLite table with its idempotency key)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from fakes import free_port

KEEL = str(Path(sys.executable).with_name("keel"))
N = 100

ACTIONS = '''
import os, sqlite3

def pay(payload, ctx):
    with sqlite3.connect(os.environ["ACTION_DB"], timeout=30) as c:
        c.execute("create table if not exists runs (key text, approval text)")
        c.execute("insert into runs values (?, ?)", (ctx.idempotency_key, ctx.approval_id))
    return {"ok": True}

def register(registry):
    registry.register("pay", pay)
'''


def start(tmp: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([KEEL, "serve", "--port", str(port), "--log-level", "warning",
                             *extra], env=env, cwd=tmp, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """kill -9 the gateway and every worker it forked (its whole session)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def runs(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return list(c.execute("select key, approval from runs"))


def wait_done(c: httpx.Client, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [c.get(f"/v1/approvals/{i}").json() for i in ids]
        if all(r["done"] for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_kill9_with_100_pending_then_each_action_runs_once(tmp_path: Path) -> None:
    (tmp_path / "durable_actions.py").write_text(ACTIONS)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[tools]\nenabled = false\n'
                   '[approvals]\nhandler_modules = ["durable_actions"]\n'
                   'polling_interval_s = 0.05\n')
    action_db = tmp_path / "actions.db"
    env = {**os.environ, "KEEL_CONFIG": str(cfg), "ACTION_DB": str(action_db),
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc, base = start(tmp_path, env)
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    h = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, headers=h, timeout=30) as c, \
                ThreadPoolExecutor(8) as pool:
            body = {"action": "pay", "amount": 5000, "risk_level": "HIGH", "reason": "r"}
            ids = list(pool.map(lambda i: c.post("/v1/approvals", json={
                **body, "arguments": {"n": i}}).json()["id"], range(N)))
            assert len(set(ids)) == N
            time.sleep(1.0)  # the workflows are parked in DBOS.recv
        kill9(proc)
        proc, base = start(tmp_path, env)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c, \
                ThreadPoolExecutor(8) as pool:
            pending = c.get("/v1/approvals", params={"status": "pending", "limit": 500}).json()
            assert {a["id"] for a in pending["data"]} == set(ids)
            assert runs(action_db) == []
            first = ids[: N // 2]
            codes = list(pool.map(lambda i: c.post(f"/v1/approvals/{i}/decision",
                                                   json={"decision": "approve"}).status_code,
                                  first))
            assert codes == [200] * len(first)
            done = wait_done(c, first)
            assert all(d["outcome"] == "executed" for d in done), done[:3]
        kill9(proc)  # again, with half of them executed
        proc, base = start(tmp_path, env)
        rest = ids[N // 2:]
        cli = subprocess.run([KEEL, "approvals", "approve", rest[0]], env=env, cwd=tmp_path,
                             capture_output=True, timeout=60)
        assert cli.returncode == 0, cli.stderr.decode()
        with httpx.Client(base_url=base, headers=h, timeout=30) as c, \
                ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: c.post(f"/v1/approvals/{i}/decision",
                                                   json={"decision": "approve"}).status_code,
                                  rest[1:]))
            assert codes == [200] * (len(rest) - 1)
            done = wait_done(c, ids)
            assert all(d["outcome"] == "executed" for d in done)
            assert c.get(f"/v1/approvals/{rest[0]}").json()["decided_via"] == "cli"
        got = runs(action_db)
        assert len(got) == N and {k for k, _ in got} == set(ids)  # exactly once each
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)


def test_gateway_runs_cli_started_executions_and_resumes_them_after_kill9(
    tmp_path: Path,
) -> None:
    """The CLI is a client: killing it does not stop or strand the execution, it never
    launches DBOS (so it cannot take over the gateway's workflows), and a kill -9 of the
    gateway resumes the waiting execution."""
    refund = Path(__file__).resolve().parents[2] / "src/keel/workflows/examples/refund.asl.json"
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[tools]\nenabled = false\n'
                   '[approvals]\npolling_interval_s = 0.05\n')
    env = {**os.environ, "KEEL_CONFIG": str(cfg)}
    proc, base = start(tmp_path, env)
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    h = {"Authorization": f"Bearer {key}"}
    cli = subprocess.Popen([KEEL, "workflows", "run", str(refund), "--url", base, "--input",
                            '{"order_id": "o-1", "amount": 5000}'], env=env, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            deadline = time.monotonic() + 60
            while not c.get("/v1/approvals", params={"status": "pending"}).json()["data"]:
                assert time.monotonic() < deadline, "no approval became pending"
                time.sleep(0.1)
            ex = c.get("/v1/executions").json()["data"]
            assert len(ex) == 1 and ex[0]["status"] == "RUNNING"
        cli.kill()  # the waiting CLI dies: the execution is the gateway's, not the CLI's
        cli.wait(timeout=10)
        kill9(proc)
        proc, base = start(tmp_path, env)
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            aid = c.get("/v1/approvals", params={"status": "pending"}).json()["data"][0]["id"]
            r = c.post(f"/v1/approvals/{aid}/decision", json={"decision": "approve"})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 60
            while (e := c.get(f"/v1/executions/{ex[0]['id']}").json())["status"] == "RUNNING":
                assert time.monotonic() < deadline, e
                time.sleep(0.1)
            assert e["status"] == "SUCCEEDED" and e["output"]["refund"]["refunded"] == 5000
        dbos = sqlite3.connect(tmp_path / "data" / "dbos.sqlite")
        owners = {r[0] for r in dbos.execute("select distinct executor_id from workflow_status")}
        assert owners == {"keel-gateway"}  # no CLI executor ever owned a workflow
    finally:
        if cli.poll() is None:
            cli.kill()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)


def test_two_workers_each_workflow_is_recovered_by_exactly_one_process(
    tmp_path: Path,
) -> None:
    """`keel serve --workers 2`: each worker runs its workflows under its own executor id;
    after kill -9 of all of them, the restarted gateway recovers each pending workflow in
    exactly one process (DBOS counts recoveries), and each action runs once."""
    (tmp_path / "durable_actions.py").write_text(ACTIONS)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[tools]\nenabled = false\n'
                   '[approvals]\nhandler_modules = ["durable_actions"]\n'
                   'polling_interval_s = 0.05\n')
    action_db = tmp_path / "actions.db"
    env = {**os.environ, "KEEL_CONFIG": str(cfg), "ACTION_DB": str(action_db),
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc, base = start(tmp_path, env, "--workers", "2")
    key = (tmp_path / "data" / "admin.key").read_text().strip()
    h = {"Authorization": f"Bearer {key}"}
    dbos = tmp_path / "data" / "dbos.sqlite"

    def owners() -> set[str]:
        with sqlite3.connect(dbos) as c:
            return {r[0] for r in c.execute("select executor_id from workflow_status")}

    try:
        body = {"action": "pay", "amount": 5000, "risk_level": "HIGH", "reason": "r"}
        ids: list[str] = []
        # /healthz answers once one worker listens; under load the second may still be
        # starting, so keep creating (fresh connections) until both own workflows
        deadline = time.monotonic() + 60
        while len(ids) < 30 or len(owners()) < 2:
            assert time.monotonic() < deadline, f"one worker took every request: {owners()}"
            ids += [httpx.post(base + "/v1/approvals", json={**body, "arguments": {"n": i}},
                               headers=h, timeout=30).json()["id"]
                    for i in range(len(ids), len(ids) + 10)]
            time.sleep(0.2)
        n = len(ids)
        assert "keel-gateway" in owners() and len(owners()) == 2, owners()  # one per worker
        kill9(proc)
        proc, base = start(tmp_path, env, "--workers", "2")
        with httpx.Client(base_url=base, headers=h, timeout=30) as c:
            for i in ids:  # fresh connections spread over both new workers
                r = httpx.post(f"{base}/v1/approvals/{i}/decision",
                               json={"decision": "approve"}, headers=h, timeout=30)
                assert r.status_code == 200, r.text
            done = wait_done(c, ids, timeout=120)
            assert all(d["outcome"] == "executed" for d in done), done[:3]
        got = runs(action_db)
        assert len(got) == n and {k for k, _ in got} == set(ids)  # exactly once each
        with sqlite3.connect(dbos) as c:
            attempts = dict(c.execute("select workflow_uuid, recovery_attempts from "
                                      "workflow_status where workflow_uuid like 'approval-%'"))
        assert max(attempts.values()) <= 2, attempts  # started once, recovered once
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=30)
