"""One job runtime per process: capabilities declare workflows and queues; the gateway
never dequeues worker-only queues; a `keel worker` process serves them and exits when idle."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MODELS_DIR, make_settings
from jobs_fixture import QUEUE, EchoJobs
from keel.app import build_services, running
from keel.errors import ConfigError
from keel.jobs.runtime import JobRuntime

FIXTURE = Path(__file__).resolve().parents[1] / "jobs_fixture.py"


async def test_worker_only_queue_runs_in_a_worker_process_that_exits_when_idle(
    tmp_path: Path,
) -> None:
    from dbos import DBOS

    s = make_settings(tmp_path)
    svc = build_services(s, capabilities=[EchoJobs])
    async with running(svc):
        runtime = svc.get(JobRuntime)
        await runtime.ensure_started()
        assert QUEUE not in runtime.served()  # the gateway serves no worker-only queue
        cap = next(c for c in svc.capabilities if isinstance(c, EchoJobs))
        queue = await DBOS.retrieve_queue_async(QUEUE)
        handles = [await queue.enqueue_async(cap.echo, i) for i in range(3)]
        await asyncio.sleep(1.0)
        statuses = [(await h.get_status()).status for h in handles]
        assert statuses == ["ENQUEUED"] * 3, "the gateway must not run worker-only work"

        t0 = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(FIXTURE), str(s.data_dir), MODELS_DIR,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(FIXTURE.parent)})
        results = [await asyncio.wait_for(h.get_result(), 60) for h in handles]
        assert [r["x"] for r in results] == [0, 2, 4]
        assert {r["pid"] for r in results} == {proc.pid}
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == "idle for 1 s"  # scaled to zero on its own
        assert time.monotonic() - t0 < 60


async def test_worker_for_an_undeclared_queue_is_a_config_error(tmp_path: Path) -> None:
    from keel.jobs.worker import serve

    with pytest.raises(ConfigError, match="no enabled capability declares the queue"):
        await serve(make_settings(tmp_path), queues=["no.such.queue"], idle_exit_s=0)
