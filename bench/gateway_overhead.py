"""Gateway overhead: keel vs LiteLLM proxy vs talking to the upstream directly.

Everything runs on 127.0.0.1 in one run:

* upstream: Debian nginx answering ``POST /v1/chat/completions`` with a fixed
  ``chat.completion`` body (with ``usage``) and ``GET /v1/models`` -- an "instant" model;
* ``direct``: wrk -> nginx (the baseline);
* ``keel``: wrk -> ``keel serve`` -> nginx;
* ``litellm``: wrk -> LiteLLM proxy 1.110 (own venv, ``.bench-venv/``) -> nginx.

The load generator is Debian ``wrk`` pinned to one core (``--client-core``), every server
(and nginx) is pinned to another (``--server-core``). For each target and concurrency it
reports req/s, p50/p99 latency, the latency added over ``direct`` at the same concurrency,
and server CPU per request (utime+stime of the server's process tree from /proc).

Usage (from the repo root, main venv)::

    .venv/bin/python bench/gateway_overhead.py                # all targets, 10 s per run
    .venv/bin/python bench/gateway_overhead.py --quick        # 2 s runs (smoke check)
    .venv/bin/python bench/gateway_overhead.py --targets direct,litellm

Needs ``apt-get install -y nginx-light wrk``; the LiteLLM venv is created on first use
(see ``ensure_litellm_venv``). Writes ``bench/results/gateway_overhead.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
BENCH_VENV = REPO / ".bench-venv"
BENCH_PY = BENCH_VENV / "bin" / "python"
MAIN_VENV_BIN = REPO / ".venv" / "bin"

ALL_TARGETS = ("direct", "keel", "litellm")
UPSTREAM_MODEL = "gpt-4o-mini"
GATEWAY_MODEL = "bench-model"
UPSTREAM_KEY = "sk-bench"
LITELLM_MASTER_KEY = "sk-litellm-bench-master"

# LiteLLM 1.110's `[proxy]` extra does not resolve here (litellm-proxy, granian, boto3, azure,
# ... are not all installable), so the proxy's runtime imports are installed by hand. These are
# the versions this bench was written against; `import litellm.proxy.proxy_server` is the test.
LITELLM_PACKAGES = (
    "litellm==1.110.2",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "fastapi==0.165.0",
    "starlette==1.10.0",
    "backoff==2.2.1",
    "PyYAML==6.0.4",
    "orjson==3.13.0",
    "APScheduler==3.11.3",
    "email-validator==2.4.0",
    "PyJWT==2.15.1",
    "cryptography==50.0.2",
    "python-multipart==0.0.34",
    "rq==3.0.0",
    "websockets==15.0.1",
    "semver==3.1.2",
    "PyNaCl==1.6.2",
    "RestrictedPython==9.0",
    "Expression==5.8.0",
    "backports.zstd==1.8.0",
    "tomlkit==0.15.2",
    "rich==13.9.4",
    "fastapi-sso==0.23.0",
    "mcp==2.3.0",
    "soundfile==0.14.0",
    "matplotlib==3.11.2",
)

# The upstream's canned answer: what an OpenAI-compatible server returns, usage included.
CHAT_RESPONSE = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": UPSTREAM_MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 8, "completion_tokens": 9, "total_tokens": 17},
    "system_fingerprint": "fp_bench",
}
MODELS_RESPONSE = {
    "object": "list",
    "data": [{"id": UPSTREAM_MODEL, "object": "model", "created": 1700000000, "owned_by": "bench"}],
}

NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    location = /v1/chat/completions {{ return 200 '{chat}'; }}
    location = /v1/models {{ return 200 '{models}'; }}
    location / {{ return 404 '{{"error":{{"message":"not found"}}}}'; }}
  }}
}}
"""

# wrk script: POST a chat body, print the summary as one JSON line from done().
# Statuses > 399 are counted by wrk itself (summary.errors.status); a `response` hook would
# make wrk copy every response into Lua and slow the client down, skewing the direct baseline.
WRK_LUA = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q) return latency:percentile(q) end
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"min":%.1f,"mean":%.1f,"stdev":%.1f,"max":%.1f,' ..
    '"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    p(50), p(90), p(99), p(99.9)))
end
"""


# -- process bookkeeping -----------------------------------------------------------------


class Processes:
    """Every child we start, in its own session, so it can be torn down with its children."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        cmd: Sequence[str],
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        """SIGTERM the process group we created, SIGKILL it if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace_s)
        # The leader may be gone while workers of its group live on: always sweep the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(2.0)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            with contextlib.suppress(Exception):
                self.stop(proc, grace_s=3.0)


PROCS = Processes()


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    atexit.register(PROCS.stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # respect nohup
        signal.signal(signal.SIGHUP, _on_signal)
    # Ctrl-C -> KeyboardInterrupt, which unwinds through the finally blocks; set explicitly
    # because a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- /proc CPU accounting ----------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read_stats() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime+stime+cutime+cstime in ticks) for every process."""
    out: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2 :].split()
        # rest[0]=state, [1]=ppid, [11]=utime, [12]=stime, [13]=cutime, [14]=cstime
        ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        out[int(entry)] = (int(rest[1]), ticks)
    return out


def tree_cpu_s(roots: Sequence[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their live (and reaped) descendants."""
    stats = _read_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in stats]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return sum(stats[p][1] for p in seen) / CLK_TCK


def core_times() -> dict[int, tuple[int, int]]:
    """core -> (busy ticks, total ticks) from /proc/stat, to see who else used our cores."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            v = [int(x) for x in vals[:8]]
            idle = v[3] + v[4]
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def core_busy(before: dict[int, tuple[int, int]], core: int | None) -> float | None:
    if core is None or core not in before:
        return None
    busy0, total0 = before[core]
    busy1, total1 = core_times()[core]
    return round((busy1 - busy0) / (total1 - total0), 3) if total1 > total0 else None


def wait_idle(roots: Sequence[int], *, window_s: float = 0.5, max_wait_s: float = 20.0) -> None:
    """Wait until the server tree burns < ~4% of a core, so one run's backlog (requests wrk
    abandoned at the end) does not bill the next run."""
    deadline = time.monotonic() + max_wait_s
    last = tree_cpu_s(roots)
    while time.monotonic() < deadline:
        time.sleep(window_s)
        now = tree_cpu_s(roots)
        if now - last <= 0.02:
            return
        last = now


# -- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def pinned(core: int | None, cmd: Sequence[str]) -> list[str]:
    return (["taskset", "-c", str(core)] if core is not None else []) + list(cmd)


def require_tool(name: str, apt_pkg: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if not path:
        raise SystemExit(f"{name} not found: apt-get update && apt-get install -y {apt_pkg}")
    return path


def loopback_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy"}}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


def chat_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]}).encode()


def post_chat(url: str, model: str, key: str | None, timeout: float = 10.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=chat_body(model), method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw[:500].decode(errors="replace")


def verify_target(
    url: str,
    model: str,
    key: str | None,
    *,
    proc: subprocess.Popen[bytes] | None,
    log: Path | None,
    timeout_s: float,
    name: str,
) -> dict[str, Any]:
    """Retry a real chat POST until it returns 200 + choices; fail loudly otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(
                f"{name} exited with {proc.returncode} during startup; log tail:\n"
                + (tail(log) if log else "")
            )
        try:
            status, body = post_chat(url, model, key)
        except (OSError, urllib.error.URLError) as exc:
            last = repr(exc)
            time.sleep(0.25)
            continue
        if status == 200 and isinstance(body, dict) and body.get("choices"):
            return body
        last = (status, body)
        if status in (401, 403, 404, 422):  # a configuration error will not fix itself
            break
        time.sleep(0.5)
    raise SystemExit(
        f"{name}: POST {url} did not answer 200 with choices; last answer: {last!r}"
        + (f"\nlog tail:\n{tail(log)}" if log else "")
    )


# -- the LiteLLM venv ------------------------------------------------------------------------


def _litellm_ready() -> bool:
    if not BENCH_PY.exists():
        return False
    probe = (
        "import importlib.metadata as m, litellm.proxy.proxy_server, matplotlib;"
        "assert m.version('litellm').startswith('1.110.')"
    )
    res = subprocess.run(
        [str(BENCH_PY), "-c", probe], capture_output=True, env=loopback_env(), check=False
    )
    return res.returncode == 0


def ensure_litellm_venv() -> Path:
    """Create/repair ``.bench-venv`` with LiteLLM proxy 1.110 + matplotlib. Idempotent: a
    no-op (one import probe, ~5 s) when the venv already works."""
    if _litellm_ready():
        return BENCH_PY
    print(f"setting up {BENCH_VENV} (LiteLLM proxy + matplotlib), about a minute ...")
    if not BENCH_PY.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run(
        [str(BENCH_PY), "-m", "pip", "install", "-q", *LITELLM_PACKAGES],
        check=True,
        env=loopback_env({"PIP_DISABLE_PIP_VERSION_CHECK": "1"}),
    )
    if not _litellm_ready():
        res = subprocess.run(
            [str(BENCH_PY), "-c", "import litellm.proxy.proxy_server"],
            capture_output=True,
            text=True,
            check=False,
        )
        raise SystemExit(
            "LiteLLM proxy still does not import after install; install what the error names "
            f"into {BENCH_VENV}:\n{res.stderr[-2000:]}"
        )
    return BENCH_PY


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str  # chat completions URL
    model: str
    key: str | None
    proc: subprocess.Popen[bytes] | None
    log: Path | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []


def start_nginx(tmp: Path, core: int | None) -> Server:
    nginx = require_tool("nginx", "nginx-light")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp,
            port=port,
            chat=json.dumps(CHAT_RESPONSE, separators=(",", ":")),
            models=json.dumps(MODELS_RESPONSE, separators=(",", ":")),
        )
    )
    log = tmp / "nginx.out"
    proc = PROCS.start(
        pinned(
            core,
            [
                nginx,
                "-p",
                str(tmp),
                "-e",
                str(tmp / "nginx-error.log"),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
        ),
        log=log,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    verify_target(
        url,
        UPSTREAM_MODEL,
        None,
        proc=proc,
        log=tmp / "nginx-error.log",
        timeout_s=10,
        name="nginx",
    )
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False).stderr
    return Server(
        "direct", url, UPSTREAM_MODEL, None, proc, log, {"version": version.strip(), "port": port}
    )


def _parse_key(text: str) -> str | None:
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            for k in ("key", "api_key", "token", "secret"):
                if isinstance(data.get(k), str):
                    return str(data[k])
    for pattern in (
        r"\b(keel[-_][A-Za-z0-9_\-]{16,})",
        r"\b(sk-[A-Za-z0-9_\-]{16,})",
        r"(?<![A-Za-z0-9_\-])([A-Za-z0-9_\-]{32,})(?![A-Za-z0-9_\-])",
    ):
        found = re.findall(pattern, text)
        if found:
            return str(found[-1])
    return None


def start_keel(tmp: Path, upstream_base: str, core: int | None, args: argparse.Namespace) -> Server:
    keel = args.keel_bin or shutil.which("keel", path=str(MAIN_VENV_BIN)) or shutil.which("keel")
    if not keel or not Path(keel).exists():
        raise SystemExit(f"keel executable not found ({MAIN_VENV_BIN}/keel); pip install -e .")
    kdir = tmp / "keel"
    kdir.mkdir()
    toml = kdir / "keel.toml"
    toml.write_text(
        f'data_dir = "{kdir / "data"}"\n'
        f"auth_required = {'false' if args.keel_no_auth else 'true'}\n"
        f'default_model = "{GATEWAY_MODEL}"\n'
        # The firewall's signature layer is on; its semantic layer embeds every prompt
        # (~4-30 ms CPU) and is measured by bench/firewall_eval.py instead.
        f"\n[firewall]\nsemantic = {'true' if args.semantic else 'false'}\n"
        "\n[[models]]\n"
        f'name = "{GATEWAY_MODEL}"\n'
        'provider = "openai"\n'
        f'upstream = "{UPSTREAM_MODEL}"\n'
        f'base_url = "{upstream_base}"\n'
        f'api_key = "{UPSTREAM_KEY}"\n'
        "input_usd_per_1m = 0.15\n"
        "output_usd_per_1m = 0.6\n"
    )
    env = loopback_env(
        {"KEEL_CONFIG": str(toml), "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "400"}
    )
    key = None
    if not args.keel_no_auth:
        res = subprocess.run(
            [keel, "keys", "create", "--tenant", "bench", "--json"],
            capture_output=True,
            text=True,
            env=env,
            cwd=kdir,
            timeout=120,
            check=False,
        )
        key = _parse_key(res.stdout) if res.returncode == 0 else None
        if not key:
            raise SystemExit(
                f"`keel keys create --tenant bench` failed (rc={res.returncode}) or printed no "
                f"key:\n{res.stdout}\n{res.stderr}\n(use --keel-no-auth to bench without auth)"
            )
    port = free_port()
    log = kdir / "keel.log"
    proc = PROCS.start(
        pinned(core, [keel, "serve", "--host", "127.0.0.1", "--port", str(port)]),
        log=log,
        env=env,
        cwd=kdir,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    verify_target(
        url, GATEWAY_MODEL, key, proc=proc, log=log, timeout_s=args.startup_timeout, name="keel"
    )
    version = "unknown"
    with contextlib.suppress(Exception):
        import importlib.metadata

        version = importlib.metadata.version("keel")
    return Server(
        "keel",
        url,
        GATEWAY_MODEL,
        key,
        proc,
        log,
        {"version": version, "port": port, "auth": not args.keel_no_auth},
    )


def start_litellm(
    tmp: Path, upstream_base: str, core: int | None, args: argparse.Namespace
) -> Server:
    py = BENCH_PY  # main() ran ensure_litellm_venv()
    ldir = tmp / "litellm"
    ldir.mkdir()
    cfg = ldir / "config.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {GATEWAY_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: {upstream_base}\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )
    port = free_port()
    log = ldir / "litellm.log"
    env = loopback_env(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_MODE": "PRODUCTION",
            "PYTHONUNBUFFERED": "1",
        }
    )
    proc = PROCS.start(
        pinned(
            core,
            [
                str(BENCH_VENV / "bin" / "litellm"),
                "--config",
                str(cfg),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
        ),
        log=log,
        env=env,
        cwd=ldir,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    verify_target(
        url,
        GATEWAY_MODEL,
        LITELLM_MASTER_KEY,
        proc=proc,
        log=log,
        timeout_s=args.startup_timeout,
        name="litellm",
    )
    version = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return Server(
        "litellm",
        url,
        GATEWAY_MODEL,
        LITELLM_MASTER_KEY,
        proc,
        log,
        {"version": version, "port": port},
    )


# -- load ------------------------------------------------------------------------------------


def write_lua(tmp: Path, server: Server) -> Path:
    auth = f'wrk.headers["Authorization"] = "Bearer {server.key}"' if server.key else ""
    path = tmp / f"wrk-{server.name}.lua"
    path.write_text(WRK_LUA.format(body=chat_body(server.model).decode(), auth=auth))
    return path


def run_wrk(
    server: Server, lua: Path, *, conns: int, duration_s: float, args: argparse.Namespace
) -> dict[str, Any]:
    wrk = require_tool("wrk", "wrk")
    threads = max(1, min(args.wrk_threads, conns))
    # Slow targets queue for seconds at c=200; a short wrk timeout would drop those requests
    # from the latency histogram instead of reporting them.
    timeout_s = max(30, int(duration_s * 3))
    cmd = pinned(
        args.client_core,
        [
            wrk,
            f"-t{threads}",
            f"-c{conns}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={timeout_s}s",
            "--latency",
            "-s",
            str(lua),
            server.url,
        ],
    )
    log = lua.with_suffix(f".c{conns}.out")
    cpu0, cores0 = tree_cpu_s(server.pids), core_times()
    t0 = time.monotonic()
    proc = PROCS.start(cmd, log=log, env=loopback_env())
    try:
        proc.wait(duration_s + timeout_s + 30)
    except subprocess.TimeoutExpired:
        PROCS.stop(proc)
        raise SystemExit(f"wrk vs {server.name} did not finish; output:\n{tail(log)}") from None
    wall = time.monotonic() - t0
    cpu1 = tree_cpu_s(server.pids)
    server_core_busy = core_busy(cores0, args.server_core)
    client_core_busy = core_busy(cores0, args.client_core)
    PROCS.stop(proc)
    text = log.read_text(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary for {server.name} c={conns}:\n{text[-3000:]}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    if server.proc is not None and server.proc.poll() is not None:
        raise SystemExit(f"{server.name} died during the run; log tail:\n{tail(server.log or log)}")
    dur = raw["duration_us"] / 1e6
    reqs = raw["requests"]
    errs = raw["errors"]
    ok = reqs - errs["status"]
    lat = raw["latency_us"]
    cpu = cpu1 - cpu0
    return {
        "target": server.name,
        "concurrency": conns,
        "duration_s": round(dur, 3),
        "requests": reqs,
        "ok_requests": ok,
        "non_2xx": errs["status"],
        "socket_errors": {k: errs[k] for k in ("connect", "read", "write", "timeout")},
        "rps": round(reqs / dur, 1) if dur else 0.0,
        "p50_ms": round(lat["p50"] / 1000, 3),
        "p90_ms": round(lat["p90"] / 1000, 3),
        "p99_ms": round(lat["p99"] / 1000, 3),
        "p999_ms": round(lat["p999"] / 1000, 3),
        "mean_ms": round(lat["mean"] / 1000, 3),
        "max_ms": round(lat["max"] / 1000, 3),
        "server_cpu_s": round(cpu, 3),
        "server_cpu_util": round(cpu / wall, 3) if wall else None,
        "cpu_ms_per_request": round(cpu * 1000 / reqs, 4) if reqs else None,
        # Busy share of the pinned cores during the run, from every process on the box: the
        # server core also runs nginx; well above server_cpu_util means outside noise.
        "server_core_busy": server_core_busy,
        "client_core_busy": client_core_busy,
        # A run shorter than a few queue turns (slow target, high c) has few samples.
        "steady": reqs >= 3 * conns,
    }


def bench_target(
    server: Server, tmp: Path, args: argparse.Namespace, console: Any
) -> list[dict[str, Any]]:
    lua = write_lua(tmp, server)
    if args.warmup > 0:
        console.print(f"[dim]{server.name}: warm-up {args.warmup:g}s[/dim]")
        run_wrk(server, lua, conns=min(8, max(args.concurrency)), duration_s=args.warmup, args=args)
    rows = []
    for conns in args.concurrency:
        wait_idle(server.pids)
        console.print(f"[dim]{server.name}: c={conns} for {args.duration:g}s ...[/dim]")
        row = run_wrk(server, lua, conns=conns, duration_s=args.duration, args=args)
        console.print(
            f"  {row['rps']:>10,.1f} req/s  p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms"
            f"  cpu {row['cpu_ms_per_request'] or 0:.3f} ms/req  non-2xx {row['non_2xx']}"
        )
        rows.append(row)
    return rows


# -- analysis ---------------------------------------------------------------------------------


def analyse(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["target"], r["concurrency"]): r for r in rows}
    for r in rows:
        base = by.get(("direct", r["concurrency"]))
        if base and r["target"] != "direct":
            r["added_p50_ms"] = round(r["p50_ms"] - base["p50_ms"], 3)
            r["added_p99_ms"] = round(r["p99_ms"] - base["p99_ms"], 3)
    ratios = {}
    for c in sorted({r["concurrency"] for r in rows}):
        k, lt = by.get(("keel", c)), by.get(("litellm", c))
        if k and lt and lt["rps"]:
            ratios[str(c)] = round(k["rps"] / lt["rps"], 2)

    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        checks.append({"check": name, "status": status, "detail": detail})

    k1 = by.get(("keel", 1))
    if k1 and "added_p50_ms" in k1:
        check(
            "keel added latency p50 <= 1 ms at c=1",
            k1["added_p50_ms"] <= 1.0,
            f"{k1['added_p50_ms']:.3f} ms",
        )
        check(
            "keel added latency p99 <= 2 ms at c=1",
            k1["added_p99_ms"] <= 2.0,
            f"{k1['added_p99_ms']:.3f} ms",
        )
    else:
        check("keel added latency at c=1", None, "needs targets keel + direct and c=1")
    keel_rows = [r for r in rows if r["target"] == "keel" and r["cpu_ms_per_request"]]
    if keel_rows:
        worst = max(r["cpu_ms_per_request"] for r in keel_rows)
        detail = ", ".join(
            f"c={r['concurrency']}: {r['cpu_ms_per_request']:.3f}" for r in keel_rows
        )
        check("keel server CPU <= 1 ms/request (every c)", worst <= 1.0, detail + " ms")
    else:
        check("keel server CPU <= 1 ms/request", None, "needs target keel")
    for c in (1, 50, 200):
        if str(c) in ratios:
            check(
                f"keel req/s >= 20x LiteLLM at c={c}",
                ratios[str(c)] >= 20.0,
                f"{ratios[str(c)]:.1f}x",
            )
        else:
            check(f"keel req/s >= 20x LiteLLM at c={c}", None, "needs keel + litellm at this c")
    bad = [
        f"{r['target']} c={r['concurrency']}: {r['non_2xx']} non-2xx, "
        f"{sum(r['socket_errors'].values())} socket errors"
        for r in rows
        if r["non_2xx"] or sum(r["socket_errors"].values())
    ]
    check("no errors under load", not bad, "; ".join(bad) or "0 non-2xx, 0 socket errors")
    return {"keel_over_litellm_rps": ratios, "checks": checks}


def print_report(rows: list[dict[str, Any]], summary: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="Gateway overhead (loopback, instant nginx upstream)")
    cols = "target conc req/s p50_ms p99_ms +p50_ms +p99_ms CPU_ms/req CPU_util core_busy"
    for col in [*cols.split(), "non-2xx", "sock_err"]:
        table.add_column(col.replace("_", " "), justify="left" if col == "target" else "right")

    def f(v: Any, spec: str = ".3f") -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        table.add_row(
            r["target"] + ("" if r["steady"] else " *"),
            str(r["concurrency"]),
            f(r["rps"], ",.1f"),
            f(r["p50_ms"]),
            f(r["p99_ms"]),
            f(r.get("added_p50_ms")),
            f(r.get("added_p99_ms")),
            f(r["cpu_ms_per_request"]),
            f(r["server_cpu_util"], ".0%"),
            f(r["server_core_busy"], ".0%"),
            str(r["non_2xx"]),
            str(sum(r["socket_errors"].values())),
        )
    console.print(table)
    console.print(
        "+p50/+p99: minus direct at the same concurrency. CPU util: server tree, share of one "
        "core. core busy: the server core, all processes (nginx too; much more than CPU util "
        "means outside noise). * fewer than 3 x c requests completed: lengthen --duration."
    )
    if summary["keel_over_litellm_rps"]:
        console.print(
            "keel / LiteLLM req/s: "
            + ", ".join(f"c={c}: {v:.1f}x" for c, v in summary["keel_over_litellm_rps"].items())
        )
    colors = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}
    for c in summary["checks"]:
        console.print(f"[{colors[c['status']]}]{c['status']}[/] {c['check']}: {c['detail']}")


# -- plot --------------------------------------------------------------------------------------


def plot(json_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(json_path.read_text())
    rows = data["results"]
    targets = [t for t in ALL_TARGETS if any(r["target"] == t for r in rows)]
    concs = sorted({r["concurrency"] for r in rows})
    by = {(r["target"], r["concurrency"]): r for r in rows}
    panels = [
        ("rps", "requests/s (log)"),
        ("p50_ms", "p50 latency ms (log)"),
        ("p99_ms", "p99 latency ms (log)"),
        ("cpu_ms_per_request", "server CPU ms/request"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.5))
    width = 0.8 / max(1, len(targets))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for i, t in enumerate(targets):
            xs = [j + i * width for j in range(len(concs))]
            ys = [(by.get((t, c)) or {}).get(key) or 0 for c in concs]
            bars = ax.bar(xs, ys, width, label=t)
            ax.bar_label(bars, labels=[f"{y:,.3g}" for y in ys], fontsize=7, rotation=90, padding=2)
        ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(concs))])
        ax.set_xticklabels([f"c={c}" for c in concs])
        ax.set_title(label, fontsize=10)
        if key != "cpu_ms_per_request":
            ax.set_yscale("log")
        ax.margins(y=0.25)
    axes[0].legend(fontsize=8)
    fig.suptitle("keel vs LiteLLM proxy vs direct (nginx upstream, loopback, 1 core each)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def make_plot(json_path: Path, png_path: Path, console: Any) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not BENCH_PY.exists():
            console.print("[yellow]matplotlib not available: no PNG (see bench/README.md)[/]")
            return
        res = subprocess.run(
            [str(BENCH_PY), __file__, "--plot-only", str(json_path), str(png_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            console.print(f"[yellow]plot failed:[/] {res.stderr[-1500:]}")
            return
    else:
        plot(json_path, png_path)
    console.print(f"wrote {png_path.relative_to(REPO)}")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help="comma list from: direct, keel, litellm (direct is the baseline)",
    )
    p.add_argument("--concurrency", default="1,50,200", help="comma list of wrk -c values")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    p.add_argument("--quick", action="store_true", help="2 s runs, 1 s warm-up (smoke check)")
    p.add_argument("--server-core", type=int, default=1, help="core for servers and nginx")
    p.add_argument("--client-core", type=int, default=0, help="core for wrk")
    p.add_argument("--no-pin", action="store_true", help="do not use taskset")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--startup-timeout", type=float, default=90.0)
    p.add_argument("--keel-bin", default=None, help="keel executable (default .venv/bin/keel)")
    p.add_argument(
        "--keel-no-auth",
        action="store_true",
        help="auth_required = false instead of a `keel keys create` key",
    )
    p.add_argument(
        "--semantic", action="store_true",
        help="turn on the firewall's semantic layer in keel (off by default: it embeds "
        "every prompt)",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "gateway_overhead.json")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a check FAILs")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    p.add_argument("--plot-only", nargs=2, metavar=("JSON", "PNG"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2.0, 1.0
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(ALL_TARGETS)}")
    args.targets = [t for t in ALL_TARGETS if t in args.targets]  # direct first
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.no_pin or not shutil.which("taskset"):
        args.server_core = args.client_core = None
    return args


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_only:
        plot(Path(args.plot_only[0]), Path(args.plot_only[1]))
        return 0
    from rich.console import Console

    install_cleanup()
    console = Console(width=None if sys.stdout.isatty() else 150)
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        console.print(
            f"[yellow]warning: load average {load1:.2f} before the run; other processes "
            "on this machine will add noise (see server_core_busy in the JSON)[/]"
        )
    require_tool("nginx", "nginx-light")
    require_tool("wrk", "wrk")
    if "litellm" in args.targets:
        ensure_litellm_venv()
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    try:
        with workdir(args.keep_tmp) as tmp:
            upstream = start_nginx(tmp, args.server_core)
            upstream_base = upstream.url.rsplit("/chat/completions", 1)[0]
            meta["nginx"] = upstream.meta["version"]
            for name in args.targets:
                if name == "direct":
                    server = upstream
                elif name == "keel":
                    server = start_keel(tmp, upstream_base, args.server_core, args)
                else:
                    server = start_litellm(tmp, upstream_base, args.server_core, args)
                meta[name] = server.meta
                try:
                    rows.extend(bench_target(server, tmp, args, console))
                finally:
                    if server is not upstream and server.proc is not None:
                        PROCS.stop(server.proc)  # free the core for the next target
            PROCS.stop_all()
    finally:
        PROCS.stop_all()

    summary = analyse(rows)
    print_report(rows, summary, console)
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    meta["wrk"] = ((wrk_v.stdout or wrk_v.stderr).splitlines() or [""])[0]
    doc = {
        "bench": "gateway_overhead",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": load1,
            "loadavg_at_end": list(os.getloadavg()),
        },
        "params": {k: v for k, v in vars(args).items() if k not in {"plot_only", "out"}}
        | {"server_core": args.server_core, "client_core": args.client_core},
        "versions": meta,
        "results": rows,
        **summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    console.print(f"wrote {args.out}")
    if not args.no_plot:
        make_plot(args.out, args.out.with_suffix(".png"), console)
    failed = any(c["status"] == "FAIL" for c in summary["checks"])
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        PROCS.stop_all()
        print("interrupted; every process the bench started was stopped", file=sys.stderr)
        sys.exit(130)
