"""Run a command (the service's tests) in a sandbox.

- Limits: wall-clock timeout (the process group is killed), CPU seconds, address space,
  open files and file size (``prlimit``).
- Network: a fresh network namespace with only a down loopback (``unshare -rn``) when the
  database clone is a file; always a Python audit hook (``sitecustomize``) that refuses
  outbound connections and DNS except to the clone's address, and refuses starting
  processes (which would escape the hook). Python-level, so it guards Python test suites.
- Environment: built from scratch: PATH, a private HOME and TMPDIR, the clone's URL and the
  service's sandbox values for its secrets; nothing of keel's own environment leaks in.

The CPU time used is measured with ``wait4`` (the child's own rusage) and priced by
``[remediation] cpu_usd_per_hour``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTPUT_CHARS = 20_000

GUARD = r'''
import socket
import sys

_ALLOW = {a for a in __import__("os").environ.get("KEEL_SANDBOX_ALLOW", "").split(",") if a}
_HOSTS = {a.rsplit(":", 1)[0] for a in _ALLOW}
_SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
          "os.fork", "os.forkpty", "pty.spawn")


def _host(h):
    return h.decode() if isinstance(h, bytes) else str(h)


def _keel_sandbox(event, args):
    if event in ("socket.connect", "socket.connect_ex", "socket.sendto", "socket.sendmsg"):
        sock, addr = args[0], args[1]
        if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", None):
            return
        if isinstance(addr, tuple) and f"{_host(addr[0])}:{addr[1]}" in _ALLOW:
            return
        raise PermissionError(f"keel sandbox: outbound network refused ({addr!r})")
    if event == "socket.getaddrinfo" and args[0] is not None and _host(args[0]) not in _HOSTS:
        raise PermissionError(f"keel sandbox: DNS refused ({_host(args[0])!r})")
    if event.startswith(_SPAWN):
        raise PermissionError(f"keel sandbox: starting processes is refused ({event})")


sys.addaudithook(_keel_sandbox)
'''


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None: killed on timeout
    timed_out: bool
    seconds: float
    cpu_s: float
    output: str
    isolation: list[str]

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def public(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "timed_out": self.timed_out,
                "seconds": round(self.seconds, 3), "cpu_s": round(self.cpu_s, 3),
                "passed": self.passed, "isolation": self.isolation,
                "output_tail": self.output[-4000:]}


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 120.0
    cpu_s: int = 120
    memory_mb: int = 1024
    nofile: int = 256
    fsize_mb: int = 256


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                              timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def build_argv(argv: list[str], limits: Limits, netns: bool) -> tuple[list[str], list[str]]:
    """The wrapped command and the isolation layers applied."""
    out = list(argv)
    layers = ["audit-hook:network+processes", "env:scrubbed"]
    if netns:
        out = ["unshare", "-rn", "--", *out]
        layers.append("netns:unshare-rn")
    if shutil.which("prlimit") is not None:
        mb = 1024 * 1024
        out = ["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_mb * mb}",
               f"--nofile={limits.nofile}", f"--fsize={limits.fsize_mb * mb}", "--core=0",
               "--", *out]
        layers.append("rlimits:prlimit")
    return out, layers


def run_sync(argv: list[str], cwd: Path, env: dict[str, str], limits: Limits, *,
             allow: list[str] = (), netns: bool | None = None) -> SandboxResult:  # type: ignore[assignment]
    """Run ``argv`` in ``cwd``; ``env`` is the whole environment (plus the guard's)."""
    home = Path(tempfile.mkdtemp(prefix="keel-sandbox-"))
    try:
        site = home / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(GUARD)
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "TMPDIR": str(home), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONPATH": str(site), "KEEL_SANDBOX": "1",
                    "KEEL_SANDBOX_ALLOW": ",".join(allow), **env}
        use_netns = (not allow) if netns is None else netns
        use_netns = use_netns and _can_unshare()
        argv = [sys.executable if a == "{python}" else a for a in argv]
        wrapped, layers = build_argv(argv, limits, use_netns)
        out_path = home / "output.txt"
        t0 = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(wrapped, cwd=cwd, env=full_env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            deadline = t0 + limits.timeout_s
            timed_out = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        text = out_path.read_bytes()[-OUTPUT_CHARS:].decode(errors="replace")
        return SandboxResult(None if timed_out else proc.returncode, timed_out, seconds,
                             usage.ru_utime + usage.ru_stime, text, layers)
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def run(argv: list[str], cwd: Path, env: dict[str, str], limits: Limits, *,
              allow: list[str] | None = None, netns: bool | None = None) -> SandboxResult:
    return await asyncio.to_thread(run_sync, argv, cwd, env, limits, allow=allow or [],
                                   netns=netns)
