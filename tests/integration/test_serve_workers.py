"""`keel serve --workers 2` as a real process: shared keys and request log across workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from keel.config import load_settings

from fakes import FakeUpstream, free_port

KEEL = str(Path(sys.executable).with_name("keel"))


def wait_until_serving(proc: subprocess.Popen[bytes], base: str) -> None:
    """Until ``/healthz`` answers 200 (the process must stay up, 60 s at most)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.1)


def test_two_workers_share_state(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[request_log]\nflush_interval_s = 0.05\n'
        f'[[models]]\nname = "fake-gpt"\nprovider = "openai"\n'
        f'base_url = "{fake_upstream.base_url}"\n'
    )
    port = free_port()
    env = {**os.environ, "KEEL_CONFIG": str(cfg)}
    proc = subprocess.Popen([KEEL, "serve", "--port", str(port), "--workers", "2",
                             "--log-level", "warning"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base)
        key = (tmp_path / "data" / "admin.key").read_text().strip()
        h = {"Authorization": f"Bearer {key}"}
        body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=base, headers=h, timeout=10) as c:
            rids: set[str] = set()
            # new connections spread over both workers; /healthz answers once one listens,
            # so under load keep going until the second one has served some too
            deadline = time.monotonic() + 60
            while len(rids) < 60 or len({rid[:16] for rid in rids}) < 2:
                assert time.monotonic() < deadline, "requests were not served by both workers"
                assert len(rids) < 1000, "one worker took 1,000 requests in a row"
                r = httpx.post(base + "/v1/chat/completions", json=body, headers=h, timeout=10)
                assert r.status_code == 200, r.text
                rids.add(r.headers["x-keel-request-id"])
            deadline = time.monotonic() + 10
            while True:
                listing = c.get("/v1/admin/requests", params={"limit": 1000})
                assert listing.status_code == 200, listing.text
                rows = listing.json()["data"]
                if len(rows) >= len(rids) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert {r["id"] for r in rows} >= rids
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        print(out.decode()[-3000:] if out else "")
    assert load_settings(cfg).data_dir == tmp_path / "data"


def _raw(port: int, data: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and (b"431" in out[:40] or len(out) > 200):
                break
        return out


def test_a_huge_request_head_is_refused_before_it_is_buffered(tmp_path: Path) -> None:
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[firewall]\nsemantic = false\n')
    port = free_port()
    env = {**os.environ, "KEEL_CONFIG": str(cfg)}
    proc = subprocess.Popen([KEEL, "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base)
        # a 1 MiB header (uvicorn alone buffered any size, 64 MB in a review)
        big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        assert _raw(port, big).startswith(b"HTTP/1.1 431")
        # ordinary heads pass, and a large body is not a large head
        assert httpx.get(base + "/healthz", headers={"X-Ok": "b" * 8000}).status_code == 200
        body = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"c" * 300_000 \
            + b'"}]}'
        r = httpx.post(base + "/v1/chat/completions", content=body,
                       headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code != 431 and r.status_code < 500
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
