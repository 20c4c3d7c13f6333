"""Batch throughput: raw xllamacpp vs keel's batch queue (scale-to-zero workers) in one run.

Documents: passages of ``shared/datasets/rag_mtrag/corpus.jsonl`` joined (in file order)
until each is about ``--doc-tokens`` tokens (4 characters a token); every line asks for a
JSON summary (title, summary, three keywords, sentiment: about 100 tokens) under a
``json_schema`` (grammar-constrained), ``max_tokens = --out-tokens``, temperature 0. The
same chat body goes to both paths:

* ``raw``   -- one ``xllamacpp.Server`` in a child process (the default GGUF,
  ``--threads`` threads, ``--slots`` parallel slots) at the workers' niceness
  (``nice -n 10``, ``[batch] worker_nice``), fed by ``--slots`` threads calling
  ``handle_completions`` with keel's own request mapping (same prompt, same grammar).
* ``queue`` -- a real gateway on 127.0.0.1 (in this process) with ``[batch]`` on and the
  shipped defaults otherwise (firewall with its semantic layer, cache bypassed for batch
  lines, degradation, RAG); the file is uploaded and the batch created with the official
  ``openai`` client; the scaler starts ``keel worker --queues keel.batch`` processes
  (``--threads`` / ``--slots`` in total, split evenly over the workers) which run the
  lines through keel's pipeline. Wall time is batch creation -> completed (worker spawn
  and model load included) and, separately, first line started -> last line finished
  (steady state, the figure compared with raw, whose model load is not timed either).
  The bench polls the batch once a second (the timings come from the lines table), so
  the polling costs the workers next to no CPU.

``--estimate`` times one document on the raw path first and prints how long the whole run
would take, then exits. Cold start and idle cost have their own benches
(``batch_cold_start.py``, ``batch_idle.py``).

Usage::

    flock /work/bench.lock .venv/bin/python bench/batch_throughput.py --estimate
    flock /work/bench.lock .venv/bin/python bench/batch_throughput.py --lines 500

Writes ``bench/results/batch_throughput.json``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "datasets" / "rag_mtrag" / "corpus.jsonl"
if not CORPUS.exists():
    CORPUS = Path("/work/shared/datasets/rag_mtrag/corpus.jsonl")
SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 60},
    "summary": {"type": "string", "maxLength": 280},
    "keywords": {"type": "array", "minItems": 3, "maxItems": 3,
                 "items": {"type": "string", "maxLength": 24}},
    "sentiment": {"enum": ["positive", "neutral", "negative"]}},
    "required": ["title", "summary", "keywords", "sentiment"], "additionalProperties": False}


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def loadavg() -> float:
    return os.getloadavg()[0]


def worker_pids() -> list[int]:
    """Processes serving ``--queues keel.batch``: ``python -m keel.jobs`` (how the scaler
    starts them) or ``keel worker`` (any parent)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read().split(b"\0")
        except OSError:
            continue
        if (b"worker" in cmd or b"keel.jobs" in cmd) and b"keel.batch" in cmd:
            out.append(int(d))
    return out


def documents(n: int, tokens: int) -> list[str]:
    """``n`` documents of about ``tokens`` tokens cut from the corpus in order; when it
    runs out, the next pass starts 613 characters further on, so no two are the same."""
    with CORPUS.open("rb") as fh:
        text = "\n".join(orjson.loads(raw)["text"] for raw in fh)
    per = tokens * 4
    if per * 2 > len(text):
        raise SystemExit(f"the corpus is too small for documents of {tokens} tokens")
    ring = text + text
    docs = []
    for k in range(n):
        start = (k * per + (k * per // len(text)) * 613) % len(text)
        docs.append(ring[start:start + per])
    return docs


def body(doc: str, out_tokens: int) -> dict[str, Any]:
    return {"model": "gemma-3-270m", "temperature": 0, "max_tokens": out_tokens,
            "messages": [{"role": "system", "content": "Summarise the document as JSON."},
                         {"role": "user", "content": doc}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "summary", "schema": SCHEMA}}}


def run_raw(bodies: list[dict[str, Any]], threads: int, slots: int, context: int
            ) -> dict[str, Any]:
    """The raw baseline, in this process (``--raw-child``: a child at the workers' nice)."""
    from keel.config import load_settings
    from keel.providers.llama_requests import chat_prompt, llama_request
    from keel.providers.local import start_llama_server
    from keel.providers.model_files import resolve_model_path

    settings = load_settings(None, models_dir=str(REPO / ".keel" / "models"))
    spec = next(m for m in settings.model_table() if m.name == "gemma-3-270m")
    path = resolve_model_path(spec, settings)
    t_load = time.perf_counter()
    holder = [start_llama_server(path, context, slots, threads, "bench")]
    load_s = time.perf_counter() - t_load
    usage = {"prompt": 0, "completion": 0}
    lock = threading.Lock()

    def one(b: dict[str, Any]) -> None:
        prompt, stop = chat_prompt(b["messages"], spec.chat_format)
        req = llama_request(b, prompt, stream=False, default_max=256, turn_stop=stop)
        got: list[bytes] = []
        holder[0].handle_completions(orjson.dumps(req), lambda r: got.append(r) and False)
        u = orjson.loads(got[-1]).get("usage") or {}
        with lock:
            usage["prompt"] += int(u.get("prompt_tokens", 0))
            usage["completion"] += int(u.get("completion_tokens", 0))

    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(one, bodies))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    holder.clear()
    n = len(bodies)
    return {"docs": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "load_s": round(load_s, 2), "input_tokens": usage["prompt"],
            "output_tokens": usage["completion"],
            "docs_per_min": round(n / wall * 60, 3),
            "output_tok_per_s": round(usage["completion"] / wall, 2),
            "tok_per_s": round((usage["prompt"] + usage["completion"]) / wall, 2),
            "cpu_s_per_doc": round(cpu / n, 3)}


def raw_in_child(args: argparse.Namespace, n: int, nice: int) -> dict[str, Any]:
    """Run the raw baseline in a child process under ``nice -n nice`` (as the workers)."""
    cmd = [sys.executable, __file__, "--raw-child", "--lines", str(n),
           "--doc-tokens", str(args.doc_tokens), "--out-tokens", str(args.out_tokens),
           "--threads", str(args.threads), "--slots", str(args.slots),
           "--context", str(args.context)]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout
    return dict(orjson.loads(out.splitlines()[-1]))


def write_config(root: Path, workers: int, threads: int, slots: int, context: int,
                 idle_s: float) -> Path:
    cfg = root / "keel.toml"
    cfg.write_text(
        f'data_dir = "{root / "data"}"\nmodels_dir = "{REPO / ".keel" / "models"}"\n'
        f"[local]\ncontext = {context}\n"
        f"[batch]\nenabled = true\nmax_workers = {workers}\n"
        f"worker_threads = {max(1, threads // workers)}\n"
        f"worker_slots = {max(1, slots // workers)}\nidle_s = {idle_s}\n"
        '[[models]]\nname = "gpt-4o-mini"\nbase_url = "http://127.0.0.1:9/v1"\n'
        "input_usd_per_1m = 0.15\noutput_usd_per_1m = 0.6\n"
        '[[models]]\nname = "claude-haiku-4.5"\nbase_url = "http://127.0.0.1:9/v1"\n'
        "input_usd_per_1m = 1.0\noutput_usd_per_1m = 5.0\n")
    return cfg


def run_queue(lines: bytes, workers: int, threads: int, slots: int, context: int,
              idle_s: float, idle_wait: float, poll_s: float = 1.0) -> dict[str, Any]:
    import httpx
    import openai

    from keel.app import create_app
    from keel.config import load_settings
    from keel.gateway.background import serving

    root = Path(tempfile.mkdtemp(prefix="keel-batch-bench-"))
    cfg = write_config(root, workers, threads, slots, context, idle_s)
    os.environ["KEEL_CONFIG"] = str(cfg)
    settings = load_settings(cfg)
    settings.auth_required = False
    app = create_app(settings)
    with serving(app) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0)
        rss_before = rss_mb()
        up = client.files.create(file=("docs.jsonl", io.BytesIO(lines)), purpose="batch")
        t0 = time.perf_counter()
        b = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        first_done = None
        peak_workers = 0
        while b.status not in ("completed", "failed", "cancelled"):
            time.sleep(poll_s)
            b = client.batches.retrieve(b.id)
            peak_workers = max(peak_workers, len(worker_pids()))
            if first_done is None and b.request_counts and b.request_counts.completed:
                first_done = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        cost = httpx.get(f"{base}/v1/batches/{b.id}/cost", timeout=30).json()
        out = client.files.content(b.output_file_id).text if b.output_file_id else ""
        ids = [orjson.loads(x)["custom_id"] for x in out.splitlines()]
        time.sleep(idle_wait)
        left = worker_pids()
        rss_after = rss_mb()
    n = len(ids)
    return {
        "workers": workers, "threads_per_worker": max(1, threads // workers),
        "slots_per_worker": max(1, slots // workers), "batch_id": b.id, "status": b.status,
        "docs": n, "failed": b.request_counts.failed if b.request_counts else None,
        "unique_custom_ids": len(set(ids)),
        "wall_s": round(wall, 2), "first_line_done_s": round(first_done or 0, 2),
        "steady_wall_s": cost["wall_s"], "cpu_s": cost["cpu_s"],
        "cpu_s_per_doc": cost["cpu_s_per_document"],
        "input_tokens": cost["input_tokens"], "output_tokens": cost["output_tokens"],
        "docs_per_min": round(n / wall * 60, 2),
        # every line settled (output or error file): the raw path answers every document,
        # including those the queue's firewall blocks or its JSON check rejects
        "lines_per_min": round(len(lines.splitlines()) / wall * 60, 2),
        "docs_per_min_steady": cost["documents_per_min"],
        "output_tok_per_s": round(cost["output_tokens"] / wall, 2),
        "tok_per_s_steady": round((cost["input_tokens"] + cost["output_tokens"])
                                  / cost["wall_s"], 2) if cost["wall_s"] else None,
        "output_tok_per_s_steady": cost["output_tok_per_s"],
        "schema": cost["schema"], "cost": cost, "peak_worker_processes": peak_workers,
        "idle_wait_s": idle_wait, "worker_processes_after_idle": len(left),
        "gateway_rss_mb_before": round(rss_before, 1),
        "gateway_rss_mb_after_idle": round(rss_after, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", "--docs", dest="lines", type=int, default=500)
    ap.add_argument("--doc-tokens", type=int, default=1000)
    ap.add_argument("--out-tokens", type=int, default=224, help="max_tokens of each line "
                    "(the schema bounds an answer to ~550 characters, ~180 tokens: the cap "
                    "only stops runaways; 160 cut some answers and their JSON with them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--context", type=int, default=2048, help="context per slot")
    ap.add_argument("--workers", default="1,2", help="worker counts to run the queue with")
    ap.add_argument("--nice", type=int, default=10, help="niceness of the raw child "
                    "(the workers run at [batch] worker_nice, 10 by default)")
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--idle-wait", type=float, default=0.0)
    ap.add_argument("--estimate", action="store_true",
                    help="time one document raw, print the projected run time, exit")
    ap.add_argument("--raw-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "batch_throughput.json"))
    args = ap.parse_args()
    docs = documents(args.lines, args.doc_tokens)
    bodies = [body(d, args.out_tokens) for d in docs]
    if args.raw_child:
        print(orjson.dumps(run_raw(bodies, args.threads, args.slots, args.context)).decode())
        return 0
    runs = [int(x) for x in args.workers.split(",")]
    if args.estimate:
        one = raw_in_child(args, 1, args.nice)
        per_doc = one["wall_s"]
        # slots decode together: at best `slots` times faster than one document alone
        lo, hi = per_doc / args.slots, per_doc
        paths = 1 + len(runs)
        print(orjson.dumps({"one_document": one, "loadavg": loadavg(), "projected_min": {
            "per_path_best": round(args.lines * lo / 60, 1),
            "per_path_worst": round(args.lines * hi / 60, 1),
            "whole_run_best": round(paths * args.lines * lo / 60, 1),
            "whole_run_worst": round(paths * args.lines * hi / 60, 1)}},
            option=orjson.OPT_INDENT_2).decode())
        return 0
    lines = b"".join(orjson.dumps({"custom_id": f"doc-{i}", "method": "POST",
                                   "url": "/v1/chat/completions", "body": b}) + b"\n"
                     for i, b in enumerate(bodies))
    result: dict[str, Any] = {
        "config": {k: getattr(args, k) for k in
                   ("lines", "doc_tokens", "out_tokens", "threads", "slots", "context",
                    "nice", "idle_s", "idle_wait")},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": loadavg()}}
    print(f"raw xllamacpp: {args.lines} docs ...", file=sys.stderr, flush=True)
    result["raw"] = raw_in_child(args, args.lines, args.nice)
    result["raw"]["loadavg_after"] = loadavg()
    print(result["raw"], file=sys.stderr, flush=True)
    result["queue"] = []
    for w in runs:
        print(f"queue with {w} worker(s) ...", file=sys.stderr, flush=True)
        q = run_queue(lines, w, args.threads, args.slots, args.context, args.idle_s,
                      args.idle_wait)
        raw = result["raw"]
        q["vs_raw_docs_per_min"] = round(q["docs_per_min"] / raw["docs_per_min"], 3)
        q["vs_raw_lines_per_min"] = round(q["lines_per_min"] / raw["docs_per_min"], 3)
        q["vs_raw_docs_per_min_steady"] = round(
            (q["docs_per_min_steady"] or 0) / raw["docs_per_min"], 3)
        q["loadavg_after"] = loadavg()
        print({k: v for k, v in q.items() if k != "cost"}, file=sys.stderr, flush=True)
        result["queue"].append(q)
    result["machine"]["loadavg_end"] = loadavg()
    Path(args.out).write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
