"""Gateway memory: RSS with no model loaded, with the local model loaded, after idle unload.

Starts ``keel serve`` (one worker) on 127.0.0.1 with ``local.idle_unload_s`` short, reads
the server's RSS from /proc at each phase, and compares with a bare FastAPI + uvicorn
process as the raw baseline in the same run. Target: RSS with no model loaded <= 200 MB;
the model's memory is returned after its idle time.

    .venv/bin/python bench/gateway_memory.py [--idle 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def bare_fastapi_rss(tmp: Path) -> float:
    app = tmp / "bare_app.py"
    app.write_text(textwrap.dedent("""
        from fastapi import FastAPI
        app = FastAPI()
        @app.get("/healthz")
        def healthz():
            return {"ok": True}
    """))
    port = free_port()
    proc = subprocess.Popen([str(BIN / "python"), "-m", "uvicorn", "bare_app:app", "--port",
                             str(port), "--log-level", "warning"], cwd=tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        time.sleep(0.5)
        return rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=5.0, help="local.idle_unload_s for the run")
    args = ap.parse_args()
    console = Console()
    out: dict[str, Any] = {"bench": "gateway_memory", "created": time.strftime("%FT%T%z"),
                           "idle_unload_s": args.idle}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out["bare_fastapi_rss_mb"] = round(bare_fastapi_rss(tmp), 1)
        cfg = tmp / "keel.toml"
        cfg.write_text(f'data_dir = "{tmp / "data"}"\nmodels_dir = "{ROOT / ".keel" / "models"}"\n'
                       f"[local]\nidle_unload_s = {args.idle}\n")
        port = free_port()
        env = {**os.environ, "KEEL_CONFIG": str(cfg)}
        proc = subprocess.Popen([str(BIN / "keel"), "serve", "--port", str(port),
                                 "--log-level", "warning"], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/healthz", proc)
            key = (tmp / "data" / "admin.key").read_text().strip()
            h = {"Authorization": f"Bearer {key}"}
            # warm the request path (no model) so imports made lazily are counted
            httpx.get(base + "/v1/models", headers=h)
            time.sleep(0.5)
            out["keel_idle_rss_mb"] = round(rss_mb(proc.pid), 1)
            body = {"model": "gemma-3-270m", "max_tokens": 8, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say hello."}]}
            r = httpx.post(base + "/v1/chat/completions", json=body, headers=h, timeout=120)
            r.raise_for_status()
            out["local_loaded_after_request"] = httpx.get(base + "/healthz").json()[
                "local_model_loaded"]
            out["keel_model_loaded_rss_mb"] = round(rss_mb(proc.pid), 1)
            t0 = time.monotonic()
            while httpx.get(base + "/healthz").json()["local_model_loaded"]:
                if time.monotonic() - t0 > args.idle + 30:
                    raise RuntimeError("model was not unloaded")
                time.sleep(0.25)
            out["unloaded_after_s"] = round(time.monotonic() - t0, 2)
            time.sleep(0.5)
            out["keel_after_unload_rss_mb"] = round(rss_mb(proc.pid), 1)
        finally:
            proc.terminate()
            proc.wait(20)
    out["checks"] = {
        "idle RSS <= 200 MB": out["keel_idle_rss_mb"] <= 200,
        "model unloaded after idle time": out["keel_after_unload_rss_mb"]
        < out["keel_model_loaded_rss_mb"] - 100,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway_memory.json").write_text(json.dumps(out, indent=2) + "\n")
    t = Table("measure", "value")
    for k, v in out.items():
        if k != "checks":
            t.add_row(k, str(v))
    for k, ok in out["checks"].items():
        t.add_row(k, "[green]PASS[/]" if ok else "[red]FAIL[/]")
    console.print(t)
    return 0 if all(out["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
