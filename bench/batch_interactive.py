"""Interactive chat next to batch work: does a running batch slow chat requests down?

A real ``keel serve`` process (shipped defaults + ``[batch] enabled``, one worker with 2
llama.cpp threads and 4 slots) answers short interactive chat requests on the default
local model (loaded in the gateway), ``--requests`` of them one after the other:

1. with nothing else running (the model warmed up first);
2. while a batch of ``--lines`` ~1,000-token documents runs in a ``keel worker`` started
   by the scaler, once per ``--nice`` value (``[batch] worker_nice``: 10 is the shipped
   default, 0 shows what the niceness buys).

Reports the median and max latency and tokens per second of the interactive requests.

Usage::

    flock /work/bench.lock .venv/bin/python bench/batch_interactive.py

Writes ``bench/results/batch_interactive.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_throughput import body, documents, worker_pids  # noqa: E402
from procs import start_gateway, stop  # noqa: E402

QUESTION = "Name three colours of the rainbow."


def gateway(root: Path, nice: int) -> tuple[subprocess.Popen[bytes], str, str]:
    return start_gateway(
        root, f'data_dir = "{root / "data"}"\nmodels_dir = "{REPO / ".keel" / "models"}"\n'
        "[local]\ncontext = 2048\n"
        f"[batch]\nenabled = true\nmax_workers = 1\nworker_threads = 2\n"
        f"worker_slots = 4\nworker_nice = {nice}\nidle_s = 5\n")


def chats(client: Any, n: int) -> dict[str, Any]:
    lat, tps = [], []
    for i in range(n):
        t = time.perf_counter()
        r = client.chat.completions.create(
            model="gemma-3-270m", max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": f"{QUESTION} ({i})"}],
            extra_headers={"x-keel-cache": "bypass"})
        dt = time.perf_counter() - t
        lat.append(dt)
        tps.append((r.usage.completion_tokens if r.usage else 0) / dt)
    return {"requests": n, "median_s": round(statistics.median(lat), 3),
            "max_s": round(max(lat), 3), "median_tok_per_s": round(statistics.median(tps), 1),
            "loadavg": round(os.getloadavg()[0], 2)}


def main() -> int:
    import openai

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--lines", type=int, default=12)
    ap.add_argument("--nice", default="10,0")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" /
                                         "batch_interactive.json"))
    args = ap.parse_args()
    lines = b"".join(orjson.dumps({"custom_id": f"doc-{i}", "method": "POST",
                                   "url": "/v1/chat/completions", "body": body(d, 160)})
                     + b"\n" for i, d in enumerate(documents(args.lines, 1000)))
    result: dict[str, Any] = {
        "config": vars(args), "machine": {
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()},
        "runs": []}
    for nice in (int(x) for x in args.nice.split(",")):
        root = Path(tempfile.mkdtemp(prefix="keel-interactive-"))
        proc, base, key = gateway(root, nice)
        try:
            client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0,
                                   timeout=300)
            chats(client, 2)  # load the model in the gateway
            alone = chats(client, args.requests)
            up = client.files.create(file=("docs.jsonl", io.BytesIO(lines)), purpose="batch")
            b = client.batches.create(input_file_id=up.id,
                                      endpoint="/v1/chat/completions",
                                      completion_window="24h")
            while not (b.request_counts and b.request_counts.completed):  # lines running
                time.sleep(0.5)
                b = client.batches.retrieve(b.id)
            busy = chats(client, args.requests)
            b = client.batches.retrieve(b.id)
            still = b.status == "in_progress"
            run = {"worker_nice": nice, "alone": alone, "with_batch": busy,
                   "batch_still_running_at_end": still,
                   "workers_seen": len(worker_pids()),
                   "slowdown_median": round(busy["median_s"] / alone["median_s"], 2)}
            print(run, file=sys.stderr, flush=True)
            result["runs"].append(run)
            if still:
                client.batches.cancel(b.id)
        finally:
            stop(proc, 60)
            shutil.rmtree(root, ignore_errors=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(orjson.dumps(result["runs"], option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
