"""Start a candidate version of a service from its worktree, wait for health, stop it.

The candidate serves real traffic (the canary share) against the production database, with
the service's real environment (``[[remediation.services]] env``); its logs go next to the
worktree. A candidate process lives as long as this keel process (documented limit: after
a restart the run's candidate is gone and the canary step fails safely).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from keel.errors import KeelError
from keel.remediation.settings import ServiceSpec


class DeployFailed(KeelError):
    code = "deploy_failed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Candidate:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path


def fill(argv: list[str], **values: str) -> list[str]:
    out = []
    for a in argv:
        a = sys.executable if a == "{python}" else a
        for k, v in values.items():
            a = a.replace("{" + k + "}", v)
        out.append(a)
    return out


class Deployer:
    def __init__(self) -> None:
        self.running: dict[str, Candidate] = {}

    async def start(self, spec: ServiceSpec, worktree: Path, name: str,
                    health_timeout_s: float = 30.0) -> Candidate:
        if not spec.start:
            raise DeployFailed(f"service {spec.name!r} has no start command "
                               "([[remediation.services]] start)")
        port = free_port()
        log_path = worktree.parent / f"{worktree.name}.log"
        argv = fill(spec.start, port=str(port), db=spec.database_url, log=str(log_path))
        env = {**os.environ, spec.database_env: spec.database_url,
               **{k: v.get_secret_value() for k, v in spec.env.items()}}
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(argv, cwd=worktree, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        cand = Candidate(name, f"http://127.0.0.1:{port}", proc, log_path)
        deadline = time.monotonic() + health_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while True:
                if proc.poll() is not None:
                    raise DeployFailed(f"the candidate exited with {proc.returncode} before it "
                                       f"was healthy; see {log_path}")
                try:
                    async with s.get(cand.url + spec.health_path) as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self._kill(cand)
                    raise DeployFailed(f"the candidate was not healthy within "
                                       f"{health_timeout_s:.0f}s; see {log_path}")
                await asyncio.sleep(0.05)
        self.running[name] = cand
        return cand

    def _kill(self, cand: Candidate) -> None:
        if cand.proc.poll() is None:
            try:
                os.killpg(cand.proc.pid, signal.SIGTERM)
                cand.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(cand.proc.pid, signal.SIGKILL)
                cand.proc.wait(timeout=5)

    async def stop(self, name: str) -> None:
        cand = self.running.pop(name, None)
        if cand is not None:
            await asyncio.to_thread(self._kill, cand)

    def get(self, name: str) -> Candidate | None:
        return self.running.get(name)

    async def stop_all(self, *, keep: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        for name in list(self.running):
            if name not in keep:
                await self.stop(name)
