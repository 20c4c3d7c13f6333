"""Two real `keel serve` processes sharing Valkey: a mode flip made from the CLI (a third
process) reaches both gateways within a second."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fakes import FakeUpstream, free_port

KEEL = str(Path(sys.executable).with_name("keel"))
FRESH_TOML = """
data_dir = "{data}"
models_dir = "{models}"
kv_url = "{kv}"
auth_required = false
[firewall]
enabled = false
[[models]]
name = "big"
upstream = "gpt-big"
base_url = "{url}"
input_usd_per_1m = 2.5
output_usd_per_1m = 10.0
[[models]]
name = "small"
upstream = "gpt-small"
base_url = "{url}"
input_usd_per_1m = 0.15
output_usd_per_1m = 0.6
[degrade]
refresh_s = 0.1
"""
TOML = FRESH_TOML + """[[degrade.levels]]
name = "deep"
models = {{ big = "big" }}
[[degrade.levels]]
name = "shallow"
models = {{ big = "small" }}
[[degrade.alarms]]
metric = "spend_usd_per_hour"
threshold = 1000.0
recover_below = 500.0
"""


def start(cfg: Path, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([KEEL, "-c", str(cfg), "serve", "--port", str(port),
                             "--log-level", "warning"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ})
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


def mode(base: str, n: int) -> str:
    body = {"model": "big", "messages": [{"role": "user", "content": f"question {n}"}]}
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=10,
                   headers={"x-keel-cache": "bypass"})
    assert r.status_code == 200, r.text
    return r.headers["x-keel-mode"]


@pytest.mark.services
def test_cli_flip_reaches_two_gateway_processes_within_a_second(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_clean_url: str
) -> None:
    from conftest import MODELS_DIR

    cfgs = []
    for name in ("a", "b"):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(TOML.format(data=tmp_path / name, models=MODELS_DIR, kv=redis_clean_url,
                                   url=fake_upstream.base_url))
        cfgs.append(cfg)
    procs = []
    try:
        for cfg in cfgs:
            procs.append(start(cfg, tmp_path))
        bases = [base for _, base in procs]
        assert [mode(b, i) for i, b in enumerate(bases)] == ["DEEP", "DEEP"]
        t0 = time.monotonic()
        r = subprocess.run([KEEL, "-c", str(cfgs[0]), "mode", "set", "shallow", "--for", "60s"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        t_set = time.monotonic()
        seen: dict[str, float] = {}
        n = 100
        while len(seen) < 2 and time.monotonic() - t_set < 5:
            for b in bases:
                n += 1
                if b not in seen and mode(b, n) == "SHALLOW":
                    seen[b] = time.monotonic() - t_set
            time.sleep(0.02)
        assert len(seen) == 2, f"not every replica flipped: {seen}"
        assert max(seen.values()) < 1.0, seen
        assert fake_upstream.calls[-1]["body"]["model"] == "gpt-small"
        assert t_set - t0 < 30
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=15)




@pytest.mark.services
def test_ladder_set_through_the_admin_api_reaches_another_process_within_a_second(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_clean_url: str
) -> None:
    """No ladder configured (the default one), then an admin replaces it on gateway A."""
    from conftest import MODELS_DIR

    procs = []
    try:
        for name in ("a", "b"):
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(FRESH_TOML.format(data=tmp_path / name, models=MODELS_DIR,
                                             kv=redis_clean_url, url=fake_upstream.base_url))
            procs.append(start(cfg, tmp_path))
        (_, a), (_, b) = procs
        assert mode(b, 0) == "DEEP"
        ladder = {"levels": [{"name": "deep"},
                             {"name": "cheap", "max_tokens": 32, "models": {"big": "small"}}]}
        t0 = time.monotonic()
        r = httpx.put(a + "/v1/admin/degrade/ladder", json=ladder, timeout=10)
        assert r.status_code == 200, r.text
        r = httpx.put(a + "/v1/admin/degrade/mode", json={"mode": "cheap"}, timeout=10)
        assert r.status_code == 200 and r.json()["mode"] == "CHEAP", r.text
        t_set = time.monotonic()
        n = 1
        while mode(b, n) != "CHEAP":
            assert time.monotonic() - t_set < 1.0, "gateway b did not switch within 1 s"
            n += 1
            time.sleep(0.02)
        sent = fake_upstream.calls[-1]["body"]
        assert sent["model"] == "gpt-small" and sent["max_tokens"] == 32
        status = httpx.get(b + "/v1/admin/degrade", timeout=10).json()
        assert status["ladder_source"] == "runtime" and status["levels"] == ["DEEP", "CHEAP"]
        assert t_set - t0 < 30
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=15)
