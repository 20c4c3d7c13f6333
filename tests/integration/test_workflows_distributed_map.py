"""A distributed Map: items go on a DBOS queue that a separate `keel workflows worker`
process serves next to the gateway (real processes, one SQLite system database)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from keel.config import Settings
from keel.gateway.services import Services

KEEL = str(Path(sys.executable).with_name("keel"))
HANDLERS = '''
import os, sqlite3, time

def slow_square(payload, ctx):
    time.sleep(0.3)
    with sqlite3.connect(os.environ["MAP_DB"], timeout=30) as c:
        c.execute("create table if not exists ran (item int, pid int)")
        c.execute("insert into ran values (?, ?)", (payload, os.getpid()))
    return payload * payload

def register(registry):
    registry.register("slow_square", slow_square)
'''


def _collect(proc: subprocess.Popen[bytes], lines: list[str]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.append(raw.decode(errors="replace"))


@pytest.fixture
def settings(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    (tmp_path / "map_handlers.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MAP_DB", str(tmp_path / "map.db"))
    settings.tools.enabled = False
    settings.approvals.polling_interval_s = 0.05
    settings.approvals.handler_modules = ["map_handlers"]
    settings.workflows.map_worker_concurrency = 2
    return settings


async def test_workers_in_other_processes_serve_a_distributed_map(
    client: httpx.AsyncClient, admin_key: str, services: Services, settings: Settings,
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "worker.toml"
    cfg.write_text(f'data_dir = "{settings.data_dir}"\n[tools]\nenabled = false\n'
                   '[approvals]\nhandler_modules = ["map_handlers"]\n'
                   'polling_interval_s = 0.05\n[workflows]\nmap_worker_concurrency = 4\n')
    env = {**os.environ, "KEEL_CONFIG": str(cfg),
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    h = {"Authorization": f"Bearer {admin_key}"}
    defn = {"StartAt": "Each", "States": {"Each": {
        "Type": "Map", "ItemProcessor": {
            "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
            "StartAt": "Sq", "States": {"Sq": {"Type": "Task", "Resource": "slow_square",
                                               "End": True}}},
        "End": True}}}
    r = await client.put("/v1/workflows/squares", json=defn, headers=h)
    assert r.status_code == 200, r.text
    await client.post("/v1/workflows/squares/executions", json={"input": [0]}, headers=h)
    worker = subprocess.Popen([KEEL, "workflows", "worker"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=_collect, args=(worker, lines), daemon=True)
    reader.start()
    try:
        # ready = its queue thread runs (the executor lock alone comes before DBOS launches)
        deadline = time.monotonic() + 90
        while not any("serving distributed Map items" in line for line in lines):
            assert worker.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, f"the worker did not start: {lines}"
            await asyncio.sleep(0.1)
        # enough items that the gateway alone (2 at a time, 0.3 s each) cannot drain the
        # queue before the worker's first poll
        items = list(range(40))
        r = await client.post("/v1/workflows/squares/executions", json={"input": items},
                              headers=h)
        eid = r.json()["id"]
        for _ in range(1200):
            ex = (await client.get(f"/v1/executions/{eid}", headers=h)).json()
            if ex["status"] != "RUNNING":
                break
            await asyncio.sleep(0.05)
        assert ex["status"] == "SUCCEEDED", ex
        assert ex["output"] == [i * i for i in items]
        with sqlite3.connect(tmp_path / "map.db") as c:
            pids = {pid for _, pid in c.execute("select item, pid from ran where item > 0")}
        assert worker.pid in pids, pids  # the other process served some of the items

        # kill -9 the worker while it holds items: the gateway resumes them
        r = await client.post("/v1/workflows/squares/executions",
                              json={"input": list(range(100, 140))}, headers=h)
        eid = r.json()["id"]
        deadline = time.monotonic() + 60
        while True:
            with sqlite3.connect(tmp_path / "map.db") as c:
                mine = c.execute("select count(*) from ran where item >= 100 and pid = ?",
                                 (worker.pid,)).fetchone()[0]
            if mine:
                break
            assert time.monotonic() < deadline, "the worker took no item"
            await asyncio.sleep(0.05)
        worker.kill()
        worker.wait(timeout=10)
        for _ in range(1200):
            ex = (await client.get(f"/v1/executions/{eid}", headers=h)).json()
            if ex["status"] != "RUNNING":
                break
            await asyncio.sleep(0.05)
        assert ex["status"] == "SUCCEEDED", ex
        assert ex["output"] == [i * i for i in range(100, 140)]
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
