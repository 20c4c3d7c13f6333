"""Targets for bench/gateway_overhead.py: the nginx upstream, keel, LiteLLM proxy.

Starting, pinning, verifying and stopping the servers, plus the /proc readers that bill
server CPU per request. Imported by gateway_overhead.py (same folder).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
BENCH_VENV = REPO / ".bench-venv"
BENCH_PY = BENCH_VENV / "bin" / "python"
MAIN_VENV_BIN = REPO / ".venv" / "bin"

# keel runs in four configurations, each its own server with an empty data dir:
#   keel              the shipped defaults (firewall signatures + semantic layer, exact +
#                     semantic cache, metering, request log), a unique prompt per request:
#                     every request is a cache miss that reaches the upstream (the headline)
#   keel-exact-hit    the defaults, one prompt repeated: exact cache hits
#   keel-semantic-hit the defaults, one rewording of a cached prompt repeated: semantic hits
#   keel-off          firewall and cache off (metering and request log on), unique prompts
KEEL_SCENARIOS = ("keel", "keel-exact-hit", "keel-semantic-hit", "keel-off")
ALL_TARGETS = ("direct", *KEEL_SCENARIOS, "litellm")
# the prompt cached first, and the rewording keel-semantic-hit then sends
SEMANTIC_PRIME = "How do I reset my password?"
SEMANTIC_ASK = "how do I reset my password"
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


# The same, but each request sends the next body of a file of pre-encoded chat bodies (one
# per line), from `offset`; wrk threads take every `step`-th line. The bench moves the offset
# on by the requests each run sent, so no prompt is sent twice to one server.
WRK_LUA_POOL = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local tcount = 0
setup = function(thread)
  thread:set("tid", tcount)
  tcount = tcount + 1
end
local bodies, n, i = {{}}, 0, 0
init = function(args)
  for line in io.lines("{path}") do n = n + 1; bodies[n] = line end
  i = {offset} + (tid or 0)
end
request = function()
  i = i + {step}
  return wrk.format(nil, nil, nil, bodies[((i - 1) % n) + 1])
end
""" + WRK_LUA.split("{auth}\n", 1)[1]


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


def chat_body(model: str, text: str = "hello") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()


def post_chat(url: str, model: str, key: str | None, timeout: float = 10.0,
              text: str = "hello") -> tuple[int, Any]:
    status, body, _ = post_chat_headers(url, model, key, timeout, text)
    return status, body


def post_chat_headers(url: str, model: str, key: str | None, timeout: float = 10.0,
                      text: str = "hello") -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(url, data=chat_body(model, text), method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            status, raw, headers = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), dict(exc.headers)
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw[:500].decode(errors="replace"), headers


def scrape(url: str) -> dict[str, float]:
    """``keel_cache_requests_total`` by outcome from a keel /metrics listener."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'keel_cache_requests_total\{outcome="([a-z_]+)"\} ([0-9.e+]+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


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


def start_keel(tmp: Path, upstream_base: str, core: int | None, args: argparse.Namespace,
               name: str = "keel") -> Server:
    keel = args.keel_bin or shutil.which("keel", path=str(MAIN_VENV_BIN)) or shutil.which("keel")
    if not keel or not Path(keel).exists():
        raise SystemExit(f"keel executable not found ({MAIN_VENV_BIN}/keel); pip install -e .")
    kdir = tmp / name
    kdir.mkdir()
    toml = kdir / "keel.toml"
    metrics_port = free_port()
    # every scenario keeps the shipped defaults except keel-off (firewall and cache off)
    off = ("\n[firewall]\nenabled = false\n\n[cache]\nenabled = false\n"
           if name == "keel-off" else "")
    toml.write_text(
        f'data_dir = "{kdir / "data"}"\n'
        f"auth_required = {'false' if args.keel_no_auth else 'true'}\n"
        f'default_model = "{GATEWAY_MODEL}"\n'
        f"{off}"
        f'\n[metrics]\nhost = "127.0.0.1"\nport = {metrics_port}\n'
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
        url, GATEWAY_MODEL, key, proc=proc, log=log, timeout_s=args.startup_timeout, name=name
    )
    version = "unknown"
    with contextlib.suppress(Exception):
        import importlib.metadata

        version = importlib.metadata.version("keel")
    return Server(
        name,
        url,
        GATEWAY_MODEL,
        key,
        proc,
        log,
        {"version": version, "port": port, "auth": not args.keel_no_auth,
         "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
         "config": toml.read_text().replace(UPSTREAM_KEY, "***")},
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
