"""Process helpers shared by the batch benches: a real ``keel serve`` on a free port, and
stopping a child process politely, then firmly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], wait_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``wait_s``; always reaps the process."""
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_gateway(root: Path, config: str, timeout_s: float = 120.0
                  ) -> tuple[subprocess.Popen[bytes], str, str]:
    """Write ``config`` to ``root/keel.toml``, start ``keel serve`` on a free port and wait
    for ``/healthz``. Returns the process, its base URL and the admin key; the gateway's
    stderr goes to ``root/gateway.log`` (its tail is the error when it does not start)."""
    import httpx

    cfg = root / "keel.toml"
    cfg.write_text(config)
    port = free_port()
    with (root / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from keel.cli.main import main; main()", "serve",
             "--port", str(port)], env={**os.environ, "KEEL_CONFIG": str(cfg)},
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code < 500:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            stop(proc, 5)
            raise SystemExit((root / "gateway.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, base, (root / "data" / "admin.key").read_text().strip()
