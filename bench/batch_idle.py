"""Idle cost of batches: worker processes and the gateway's RSS around two batches.

Starts a real ``keel serve`` process (shipped defaults + ``[batch] enabled``, the scaler
on, ``idle_s`` short) and measures its resident set size (``VmRSS``):

1. idle before the first batch (``--settle`` seconds after start-up);
2. ``--idle-wait`` seconds (default 60) after the last line of a first batch;
3. the same after a second batch.

and the ``keel worker`` processes left at 2. and 3. (should be 0: workers exit after
``idle_s``), plus the gateway's CPU time while idle (between 1. and the first batch, and
over each idle wait). Each batch is ``--lines`` short documents -> JSON summary under a
``json_schema`` (``max_tokens`` 16) on the default local model, submitted with the
official ``openai`` client.

Usage::

    flock /work/bench.lock .venv/bin/python bench/batch_idle.py

Writes ``bench/results/batch_idle.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_cold_start import SCHEMA, proc_cpu_s  # noqa: E402
from batch_throughput import documents, worker_pids  # noqa: E402
from procs import start_gateway, stop  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def batch_file(docs: list[str], tag: str) -> bytes:
    out = b""
    for i, d in enumerate(docs):
        body = {"model": "gemma-3-270m", "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "system", "content": "Summarise the document as JSON."},
                             {"role": "user", "content": d}],
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "summary", "schema": SCHEMA}}}
        out += orjson.dumps({"custom_id": f"{tag}-{i}", "method": "POST",
                             "url": "/v1/chat/completions", "body": body}) + b"\n"
    return out


def main() -> int:
    import openai

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=4)
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--idle-wait", type=float, default=60.0)
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "batch_idle.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="keel-idle-"))
    result: dict[str, Any] = {
        "config": vars(args) | {"settings": "shipped defaults + [batch] enabled"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "points": []}
    proc, base, key = start_gateway(
        root, f'data_dir = "{root / "data"}"\nmodels_dir = "{REPO / ".keel" / "models"}"\n'
        f"[batch]\nenabled = true\nmax_workers = 1\nworker_threads = 2\n"
        f"idle_s = {args.idle_s}\n")
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0,
                               timeout=60)

        def point(name: str, cpu_from: float | None = None) -> float:
            cpu = proc_cpu_s(proc.pid)
            p = {"at": name, "gateway_rss_mb": round(rss_mb(proc.pid), 1),
                 "worker_processes": len(worker_pids()), "gateway_cpu_s": round(cpu, 2),
                 "loadavg": round(os.getloadavg()[0], 2)}
            if cpu_from is not None:
                p["gateway_cpu_s_over_wait"] = round(cpu - cpu_from, 3)
            result["points"].append(p)
            print(p, file=sys.stderr, flush=True)
            return cpu

        time.sleep(args.settle)
        cpu = point("idle before the first batch")
        time.sleep(args.idle_wait)
        cpu = point(f"{args.idle_wait:g} s later, still no batch", cpu)
        docs = documents(args.lines * 2, 120)
        for n, tag in enumerate(("first", "second")):
            up = client.files.create(file=(f"{tag}.jsonl", io.BytesIO(batch_file(
                docs[n * args.lines:(n + 1) * args.lines], tag))), purpose="batch")
            b = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
            while b.status not in ("completed", "failed", "cancelled"):
                time.sleep(0.5)
                b = client.batches.retrieve(b.id)
            assert b.output_file_id, b
            out = client.files.content(b.output_file_id).text.splitlines()
            print(f"{tag} batch {b.status}: {len(out)} lines", file=sys.stderr, flush=True)
            cpu = proc_cpu_s(proc.pid)
            time.sleep(args.idle_wait)
            cpu = point(f"{args.idle_wait:g} s after the last line of the {tag} batch", cpu)
    finally:
        stop(proc)
        shutil.rmtree(root, ignore_errors=True)
    pts = result["points"]
    result["rss_growth_mb"] = {"first_batch": round(pts[2]["gateway_rss_mb"] - pts[0]
                                                    ["gateway_rss_mb"], 1),
                               "second_batch": round(pts[3]["gateway_rss_mb"] - pts[2]
                                                     ["gateway_rss_mb"], 1)}
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(orjson.dumps({"points": pts, "rss_growth_mb": result["rss_growth_mb"]},
                       option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
