"""Scale batch workers from zero: start ``keel worker --queues keel.batch`` processes while
lines are open, up to ``batch.max_workers``; each exits by itself after ``batch.idle_s``
without work (``--idle-exit``), so an idle system has no worker process and no model in
memory.

The scaler runs in the gateway only while there is batch work: a batch's creation (or a
gateway start with unfinished batches) starts its loop, which ends once no line is open
and every worker it started has exited. Workers run under ``nice`` (``batch.worker_nice``)
so interactive requests served by the gateway on the same machine keep the CPU.

Workers share the gateway's settings: they inherit its environment and config file
(``KEEL_CONFIG``) plus the data directory and database URLs, and get the llama.cpp
threads and slots of ``[batch]`` as ``KEEL_LOCAL__*`` overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from keel.batch.jobs import QUEUE
from keel.config import Settings

log = logging.getLogger("keel.batch")
POLL_S = 1.0


def worker_command(settings: Settings) -> list[str]:
    b = settings.batch
    cmd = [sys.executable, "-m", "keel.jobs", "--queues", QUEUE, "--idle-exit", f"{b.idle_s:g}"]
    return ["nice", "-n", str(b.worker_nice), *cmd] if b.worker_nice else cmd


def worker_env(settings: Settings, config: Path | None = None) -> dict[str, str]:
    b = settings.batch
    env = dict(os.environ)
    if config is not None:
        env["KEEL_CONFIG"] = str(config.resolve())
    env["KEEL_DATA_DIR"] = str(settings.data_dir.resolve())
    if settings.database_url:
        env["KEEL_DATABASE_URL"] = settings.database_url
    if settings.approvals.system_database_url:
        env["KEEL_APPROVALS__SYSTEM_DATABASE_URL"] = settings.approvals.system_database_url
    env["KEEL_LOCAL__SLOTS"] = str(b.worker_slots)
    if b.worker_threads:
        env["KEEL_LOCAL__THREADS"] = str(b.worker_threads)
    # llama.cpp's threads fill the worker's cores: an embedder thread pool as wide as the
    # machine would preempt them mid-step (both pools wait on their own barriers)
    env["KEEL_LOCAL__EMBEDDER_THREADS"] = str(settings.local.embedder_threads or 1)
    if b.worker_embedder_precision != "inherit":
        env["KEEL_LOCAL__EMBEDDER_PRECISION"] = b.worker_embedder_precision
    env["KEEL_LOCAL__IDLE_UNLOAD_S"] = "0"  # the worker's own exit frees the model
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Scaler:
    def __init__(self, settings: Settings, open_lines: Callable[[], Awaitable[int]], *,
                 config: Path | None = None, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.open_lines = open_lines
        self.config = config
        self.log_dir = log_dir or settings.data_dir / "logs"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started = 0  # workers started over this scaler's life
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def alive(self) -> int:
        self.workers = [w for w in self.workers if w.poll() is None]
        return len(self.workers)

    def wanted(self, open_lines: int) -> int:
        b = self.settings.batch
        return min(b.max_workers, math.ceil(open_lines / b.worker_slots)) if open_lines else 0

    def poke(self) -> None:
        """There is work: make sure the loop runs (no-op when it does)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="keel-batch")

    async def _loop(self) -> None:
        while not self._closed:
            try:
                n = await self.open_lines()
            except Exception as exc:  # keep scaling; the next poll retries
                log.warning("batch scaler: counting open lines failed: %s", exc)
                n = 1
            alive = self.alive()
            for _ in range(self.wanted(n) - alive):
                self._spawn()
            if n == 0 and alive == 0:
                return  # nothing left: no loop, no workers
            await asyncio.sleep(POLL_S)

    def _spawn(self) -> None:
        from keel.storage.private_files import private_dir

        private_dir(self.log_dir)
        path = self.log_dir / "batch-workers.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            proc = subprocess.Popen(
                worker_command(self.settings), env=worker_env(self.settings, self.config),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)  # Ctrl-C on the gateway does not hit workers
        self.workers.append(proc)
        self.started += 1
        log.info("batch scaler: started worker pid %d (%d running)", proc.pid,
                 len(self.workers))

    async def aclose(self, grace_s: float = 10.0) -> None:
        """Stop the loop and the workers (SIGTERM, then SIGKILL after ``grace_s``); their
        unfinished lines are resumed by the next worker."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for w in self.workers:
            if w.poll() is None:
                w.terminate()
        deadline = time.monotonic() + grace_s
        for w in self.workers:
            while w.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if w.poll() is None:
                w.kill()
                await asyncio.to_thread(w.wait)
        self.workers = []
