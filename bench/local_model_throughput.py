"""Local model throughput: raw xllamacpp vs keel's LocalProvider (vs the HTTP gateway).

Same GGUF (the default Gemma 3 270M), the very same in-process llama.cpp server (a second
server in one process would slow both: libgomp stops spinning once it manages more threads
than there are cores), the same Gemma-format prompt, the same ``max_tokens``, temperature 0.
The paths run interleaved, one repetition of each in turn, so CPU noise from the rest of the
machine lands on all of them alike:

* ``raw stream``       -- ``xllamacpp.Server.handle_completions`` with a callback, called
  straight from a thread (the baseline);
* ``provider stream``  -- ``LocalProvider.chat_stream`` in this process (thread -> asyncio
  bridge, chunk shaping);
* ``raw`` non-stream -- one callback with the whole answer; ``provider`` non-stream --
  ``LocalProvider.chat`` (streams inside its worker thread so a cancel can stop it);
* ``gateway stream``   -- ``POST /v1/chat/completions`` with ``stream: true`` through keel's
  full HTTP gateway (uvicorn + auth + pipeline + metering + request log), by default served
  in this process on 127.0.0.1 on the *same* event loop and the *same* llama.cpp server, so
  the difference to ``provider stream`` is the gateway's own cost (client CPU included).
  ``--gateway-url`` measures an external ``keel serve`` instead (its own llama.cpp server).

Per repetition: TTFT (request start -> first content token), decode tok/s (tokens after the
first / time from first to last token) and end-to-end tok/s (completion tokens / total time).
Reported: medians, the provider/raw ratios (target >= 95% of raw decode tok/s, TTFT overhead
<= 5 ms), model load time, and RSS before load / loaded / after idle unload.

Usage::

    .venv/bin/python bench/local_model_throughput.py                 # 5 reps, 64 tokens
    .venv/bin/python bench/local_model_throughput.py --reps 9 --max-tokens 128
    .venv/bin/python bench/local_model_throughput.py --gateway-url http://127.0.0.1:8080 \\
        --api-key "$KEEL_KEY"

Writes ``bench/results/local_model_throughput.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from keel.config import LocalModelSettings, ModelSpec, Settings  # noqa: E402
from keel.providers.llama_requests import chat_prompt, llama_request  # noqa: E402
from keel.providers.local import LocalProvider  # noqa: E402
from keel.providers.model_files import ensure_default_model  # noqa: E402

OUT = REPO / "bench" / "results" / "local_model_throughput.json"
MESSAGES = [
    {"role": "system", "content": "You are a storyteller."},
    {"role": "user", "content": "Tell a long story about a lighthouse keeper and a storm."},
]
console = Console()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def loadavg() -> float:
    return os.getloadavg()[0]


def sample(t0: float, times: list[float], tokens: int) -> dict[str, float]:
    """One repetition: ``times`` are the arrival times of content pieces."""
    end = times[-1] if times else time.perf_counter()
    decode = (tokens - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {
        "ttft_ms": (times[0] - t0) * 1000 if times else float("nan"),
        "decode_tok_s": decode,
        "e2e_tok_s": tokens / (end - t0),
        "tokens": tokens,
    }


# -- the paths ------------------------------------------------------------------------------


def raw_stream(server: Any, req: dict[str, Any]) -> dict[str, float]:
    payload = orjson.dumps({**req, "stream": True})
    times: list[float] = []
    usage: dict[str, Any] = {}

    def on_chunk(raw: bytes) -> bool:
        now = time.perf_counter()
        data = orjson.loads(raw)
        choice = data["choices"][0] if data.get("choices") else {}
        if choice.get("text"):
            times.append(now)
        if data.get("usage"):
            usage.update(data["usage"])
        return False

    t0 = time.perf_counter()
    server.handle_completions(payload, on_chunk)
    return sample(t0, times, int(usage.get("completion_tokens", 0)))


def raw_once(server: Any, req: dict[str, Any]) -> dict[str, float]:
    payload = orjson.dumps({**req, "stream": False})
    out: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    server.handle_completions(payload, lambda raw: out.append(orjson.loads(raw)))
    t1 = time.perf_counter()
    n = int(out[0]["usage"]["completion_tokens"])
    return {"e2e_tok_s": n / (t1 - t0), "tokens": n}


async def provider_stream(p: LocalProvider, spec: ModelSpec, body: dict[str, Any]) -> Any:
    times: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    async for chunk in p.chat_stream({**body, "stream": True}, spec):
        if chunk["choices"][0]["delta"].get("content"):
            times.append(time.perf_counter())
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    return sample(t0, times, tokens)


async def provider_once(p: LocalProvider, spec: ModelSpec, body: dict[str, Any]) -> Any:
    t0 = time.perf_counter()
    res = await p.chat(body, spec)
    n = res["usage"]["completion_tokens"]
    return {"e2e_tok_s": n / (time.perf_counter() - t0), "tokens": n}


async def gateway_stream(
    client: httpx.AsyncClient, url: str, model: str, body: dict[str, Any]
) -> dict[str, float]:
    """One streamed request through the gateway. It sends ``x-keel-cache: bypass``: the
    prompt repeats at temperature 0, so without it every repetition after the first would
    time a cache replay instead of the model; both are checked on the answer."""
    times: list[float] = []
    tokens = 0
    payload = {**body, "model": model, "stream": True,
               "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=payload,
                             headers={"x-keel-cache": "bypass"}) as resp:
        resp.raise_for_status()
        cache = resp.headers.get("x-keel-cache")
        if cache not in (None, "bypass"):  # None: a gateway with the cache off
            raise SystemExit(f"gateway answered with x-keel-cache: {cache}; this bench times "
                             "the model, not the cache")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                times.append(time.perf_counter())
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens <= 0 or len(times) < 2:
        raise SystemExit(f"gateway stream counted {tokens} tokens in {len(times)} content "
                         "chunks: nothing was decoded, so there is no rate to report")
    return sample(t0, times, tokens)


async def start_inproc_gateway(
    settings: Settings, provider: LocalProvider, model_path: Path, args: argparse.Namespace
) -> tuple[Any, str, str]:
    """keel's HTTP gateway on this event loop, routed to the already loaded provider."""
    import socket

    import uvicorn

    from keel.app import build_services, create_app

    gw_settings = settings.model_copy(update={
        "models": [ModelSpec(name=args.gateway_model, provider="local", path=str(model_path),
                             context=args.context)],
    })
    svc = build_services(gw_settings, providers={"local": provider})
    key = svc.keys.create("bench").secret
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(gw_settings, services=svc), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False, loop="none",
                            http="httptools")
    server = uvicorn.Server(config)
    asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, f"http://127.0.0.1:{port}", key


# -- driver ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model_path = ensure_default_model(Path(args.model_dir), progress=True)
    data_dir = Path(tempfile.mkdtemp(prefix="keel-bench-"))
    local = LocalModelSettings(threads=args.threads, context=args.context, idle_unload_s=1.0)
    settings = Settings(data_dir=data_dir, local=local)
    spec = ModelSpec(
        name="gemma-3-270m", provider="local", path=str(model_path), context=args.context
    )
    body = {"messages": MESSAGES, "max_tokens": args.max_tokens, "temperature": 0}
    prompt, turn_stop = chat_prompt(MESSAGES, spec.chat_format)
    req = llama_request(
        body, prompt, stream=True, default_max=args.max_tokens, turn_stop=turn_stop
    )
    threads = args.threads or len(os.sched_getaffinity(0))
    load_start = loadavg()

    # memory and load time: the provider alone in the process
    provider = LocalProvider(settings, slots=args.slots)
    rss_before = rss_mb()
    t = time.perf_counter()
    await provider.preload(spec)
    load_s = time.perf_counter() - t
    await provider.chat({**body, "max_tokens": 8}, spec)  # touch the KV cache and buffers
    rss_loaded = rss_mb()
    while provider.loaded:  # idle_unload_s = 1
        await asyncio.sleep(0.05)
    rss_unloaded = rss_mb()
    memory = {
        "load_s": load_s,
        "rss_before_load_mb": rss_before,
        "rss_loaded_mb": rss_loaded,
        "rss_after_unload_mb": rss_unloaded,
    }
    console.print(
        f"load {load_s:.2f} s; RSS {rss_before:.0f} MB -> {rss_loaded:.0f} MB loaded -> "
        f"{rss_unloaded:.0f} MB after idle unload"
    )

    await provider.aclose()

    # throughput: the provider stays loaded
    provider = LocalProvider(
        Settings(data_dir=data_dir, local=local.model_copy(update={"idle_unload_s": 3600.0})),
        slots=args.slots,
    )
    await provider.preload(spec)
    # the raw baseline drives the provider's own llama.cpp server: a second server in one
    # process would slow both (~35%, libgomp throttles spinning when threads > cores)
    raw = await provider.llama_server(spec)
    auth = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    client = httpx.AsyncClient(timeout=300, headers=auth)
    paths: dict[str, Any] = {
        "raw stream": lambda: asyncio.to_thread(raw_stream, raw, req),
        "provider stream": lambda: provider_stream(provider, spec, body),
        "raw": lambda: asyncio.to_thread(raw_once, raw, req),
        "provider": lambda: provider_once(provider, spec, body),
    }
    server = None
    url = (args.gateway_url or "").rstrip("/")
    if not url and not args.no_gateway:
        server, url, key = await start_inproc_gateway(settings, provider, model_path, args)
        client.headers["Authorization"] = f"Bearer {key}"
    if url:
        paths["gateway stream"] = lambda: gateway_stream(client, url, args.gateway_model, body)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    ttft_runs: dict[str, list[float]] = {}
    try:
        for fn in paths.values():  # warm-up: prompt cache, first-call costs
            await fn()
        for rep in range(args.reps):
            for name, fn in paths.items():
                runs[name].append(await fn())
            console.print(f"rep {rep + 1}/{args.reps} done (load avg {loadavg():.2f})")
        # TTFT alone: many short runs, interleaved (2 tokens, so a content token arrives)
        short_body = {**body, "max_tokens": 2}
        short_req = {**req, "max_tokens": 2}
        ttft_paths: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {
            "raw stream": lambda: asyncio.to_thread(raw_stream, raw, short_req),
            "provider stream": lambda: provider_stream(provider, spec, short_body),
        }
        if "gateway stream" in paths:
            ttft_paths["gateway stream"] = lambda: gateway_stream(
                client, url, args.gateway_model, short_body
            )
        for _ in range(args.ttft_reps):
            for name, fn in ttft_paths.items():
                ttft_runs.setdefault(name, []).append((await fn())["ttft_ms"])
    finally:
        await client.aclose()
        if server is not None:
            server.should_exit = True
            await asyncio.sleep(0.3)
        await provider.aclose()
        shutil.rmtree(data_dir, ignore_errors=True)

    medians = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    ttft = {name: statistics.median(v) for name, v in ttft_runs.items()}
    raw_s, prov_s = medians["raw stream"], medians["provider stream"]
    ratios = {
        "provider_stream_decode_vs_raw": prov_s["decode_tok_s"] / raw_s["decode_tok_s"],
        "provider_stream_e2e_vs_raw": prov_s["e2e_tok_s"] / raw_s["e2e_tok_s"],
        "provider_stream_ttft_overhead_ms": ttft["provider stream"] - ttft["raw stream"],
        "provider_nonstream_e2e_vs_raw": medians["provider"]["e2e_tok_s"]
        / medians["raw"]["e2e_tok_s"],
    }
    if "gateway stream" in medians:
        gw = medians["gateway stream"]
        ratios["gateway_stream_decode_vs_raw"] = gw["decode_tok_s"] / raw_s["decode_tok_s"]
        ratios["gateway_stream_ttft_overhead_ms"] = ttft["gateway stream"] - ttft["raw stream"]
    checks = {
        "provider decode tok/s >= 95% of raw": ratios["provider_stream_decode_vs_raw"] >= 0.95,
        "provider TTFT overhead <= 5 ms": ratios["provider_stream_ttft_overhead_ms"] <= 5.0,
    }
    if "gateway stream" in medians:
        checks["gateway decode tok/s >= 95% of raw"] = (
            ratios["gateway_stream_decode_vs_raw"] >= 0.95
        )
        checks["gateway TTFT overhead <= 5 ms"] = ratios["gateway_stream_ttft_overhead_ms"] <= 5.0

    table = Table(title=f"Gemma 3 270M Q4_K_M, {threads} threads, {args.max_tokens} tokens")
    for col in ("path", "TTFT ms", "decode tok/s", "e2e tok/s", "tokens"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name, m in medians.items():
        first = f"{m['ttft_ms']:.1f}" if "ttft_ms" in m else "-"
        dec = f"{m['decode_tok_s']:.1f}" if "decode_tok_s" in m else "-"
        table.add_row(name, first, dec, f"{m['e2e_tok_s']:.1f}", f"{m['tokens']:.0f}")
    console.print(table)
    console.print(
        "TTFT medians over "
        f"{args.ttft_reps} short runs: "
        + ", ".join(f"{name} {value:.1f} ms" for name, value in ttft.items())
    )
    for key, value in ratios.items():
        console.print(f"{key}: {value:.3f}")
    for check, ok in checks.items():
        console.print(f"[{'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/] {check}")
    load_end = loadavg()
    if max(load_start, load_end) > 0.5:
        console.print(
            f"[yellow]load average {load_start:.2f} -> {load_end:.2f}: the machine was busy; "
            "absolute numbers are low, compare the ratios[/]"
        )
    return {
        "benchmark": "local_model_throughput",
        "model": str(model_path.name),
        "params": {
            "reps": args.reps,
            "max_tokens": args.max_tokens,
            "threads": threads,
            "context": args.context,
            "slots": args.slots,
            "ttft_reps": args.ttft_reps,
            "temperature": 0,
            "gateway_url": args.gateway_url,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "memory": memory,
        "runs": runs,
        "medians": medians,
        "ttft_runs_ms": ttft_runs,
        "ttft_medians_ms": ttft,
        "ratios": ratios,
        "checks": checks,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--slots", type=int, default=4, help="llama.cpp parallel slots (both)")
    ap.add_argument("--ttft-reps", type=int, default=30, help="extra 1-token runs for TTFT")
    ap.add_argument("--model-dir", default=str(REPO / ".keel" / "models"))
    ap.add_argument("--gateway-url", default=None,
                    help="measure an external keel gateway instead of the in-process one")
    ap.add_argument("--no-gateway", action="store_true", help="skip the gateway path")
    ap.add_argument("--gateway-model", default="gemma-3-270m")
    ap.add_argument("--api-key", default=os.environ.get("KEEL_API_KEY", ""))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    result = asyncio.run(run(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
