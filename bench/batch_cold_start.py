"""Batch worker cold start: process spawn -> first token, median of several spawns.

A real gateway on 127.0.0.1 (in this process, ``[batch] autoscale = false`` so nothing
starts workers behind the bench's back) holds a 1-line batch: a short document, the
batch's ``json_schema`` summary, ``max_tokens = 1``. The bench then spawns the exact
command and environment the scaler uses (``keel.batch.scaler.worker_command`` /
``worker_env``: ``nice -n 10 python -m keel.jobs --queues keel.batch --idle-exit S``) and
times, from the spawn:

* ``ready_s``  -- the worker logged "worker ready" (imports, capabilities, DBOS launch);
* ``started_s`` -- the line was claimed (``batch_lines.started_at``);
* ``first_token_s`` -- the line was done (``finished_at``; with one output token that is
  the first token, plus writing the result);
* ``cpu_s`` -- the worker process's CPU time at that moment.

Variants: ``selective`` (the shipped worker: builds only what ``keel.batch`` needs and
loads the firewall's compiled rule set from the data dir, which the gateway wrote at
its start), ``plain`` (the same worker, the line without ``response_format``: no
grammar, so no llguidance vocabulary trie to build) and ``full`` (the previous
behaviour: a worker serving every queue builds every enabled capability, and the
compiled rule set is deleted before each spawn so the firewall compiles it again).
Everything else is the shipped default configuration (firewall with its semantic layer,
cache, degradation, RAG, tools, approvals on). keel's modules are compiled to bytecode
first, as ``make run`` / ``make test`` do (and a wheel install does): an editable install
leaves them as sources, and where ``PYTHONDONTWRITEBYTECODE`` is set every worker compiled
them again, ~0.4 s of its start.

Usage::

    flock /work/bench.lock .venv/bin/python bench/batch_cold_start.py --reps 5

Writes ``bench/results/batch_cold_start.json``.
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
import threading
import time
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import stop  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "topic": {"type": "string", "maxLength": 40},
    "sentiment": {"enum": ["positive", "neutral", "negative"]}},
    "required": ["topic", "sentiment"], "additionalProperties": False}
DOC = ("The new cafe on Main Street serves excellent coffee and the staff are friendly, "
       "although the pastries sold out early on Saturday.")


def line(custom_id: str, constrained: bool = True) -> bytes:
    body: dict[str, Any] = {
        "model": "gemma-3-270m", "temperature": 0, "max_tokens": 1,
        "messages": [{"role": "system", "content": "Summarise the document as JSON."},
                     {"role": "user", "content": DOC}]}
    if constrained:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "summary", "schema": SCHEMA}}
    return orjson.dumps({"custom_id": custom_id, "method": "POST",
                         "url": "/v1/chat/completions", "body": body}) + b"\n"


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Tail:
    """Read a worker's stderr in a thread, stamping each line with its arrival time."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[tuple[float, str]] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append((time.time(), raw.decode(errors="replace").rstrip()))

    def first(self, needle: str) -> tuple[float, str] | None:
        return next(((t, s) for t, s in self.lines if needle in s), None)


def write_config(root: Path, threads: int, slots: int) -> Path:
    cfg = root / "keel.toml"
    cfg.write_text(
        f'data_dir = "{root / "data"}"\nmodels_dir = "{REPO / ".keel" / "models"}"\n'
        f"[batch]\nenabled = true\nautoscale = false\nmax_workers = 1\n"
        f"worker_threads = {threads}\nworker_slots = {slots}\nidle_s = 30\n")
    return cfg


def spawn_once(settings: Any, cfg: Path, client: Any, db_url: str, variant: str,
               n: int) -> dict[str, Any]:
    import sqlalchemy as sa

    from keel.batch.scaler import worker_command, worker_env

    data = line(f"cold-{n}", constrained=variant != "plain")
    up = client.files.create(file=(f"cold-{n}.jsonl", io.BytesIO(data)), purpose="batch")
    b = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    cmd = worker_command(settings)
    if variant == "full":  # every queue -> every enabled capability; no compiled rule set
        i = cmd.index("--queues")
        del cmd[i:i + 2]
        shutil.rmtree(settings.data_dir / "cache" / "hyperscan", ignore_errors=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=worker_env(settings, cfg), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tail = Tail(proc.stderr)
    engine = sa.create_engine(db_url)
    q = sa.text("SELECT started_at, finished_at, status, wall_s FROM batch_lines "
                "WHERE batch_id = :b")
    row = None
    cpu = None
    try:
        while time.time() - t0 < 600:
            with engine.connect() as c:
                row = c.execute(q, {"b": b.id}).first()
            if row is not None and row.finished_at is not None:
                cpu = proc_cpu_s(proc.pid)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.01)
    finally:
        stop(proc)
        engine.dispose()
    if row is None or row.finished_at is None:
        raise SystemExit("the worker did not finish the line:\n"
                         + "\n".join(s for _t, s in tail.lines[-30:]))
    ready = tail.first("worker ready")
    loaded = tail.first("local model")
    return {"variant": variant, "status": row.status,
            "ready_s": round(ready[0] - t0, 3) if ready else None,
            "started_s": round(row.started_at - t0, 3),
            "first_token_s": round(row.finished_at - t0, 3),
            "line_call_s": round(row.wall_s, 3),  # the model call through the pipeline
            "cpu_s": round(cpu or 0.0, 2),
            "worker_log": {"ready": ready[1].split(" INFO ", 1)[-1] if ready else None,
                           "model": loaded[1].split(" INFO ", 1)[-1] if loaded else None}}


def run_variant(variant: str, reps: int, threads: int, slots: int) -> list[dict[str, Any]]:
    import openai

    from keel.app import create_app
    from keel.config import load_settings
    from keel.gateway.background import serving

    root = Path(tempfile.mkdtemp(prefix="keel-cold-"))
    cfg = write_config(root, threads, slots)
    os.environ["KEEL_CONFIG"] = str(cfg)
    settings = load_settings(cfg)
    settings.auth_required = False
    rows = []
    try:
        with serving(create_app(settings)) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0)
            for n in range(reps):
                r = spawn_once(settings, cfg, client, settings.db_url, variant, n)
                r["loadavg"] = round(os.getloadavg()[0], 2)
                print(r, file=sys.stderr, flush=True)
                rows.append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(k: str) -> float | None:
        vals = [r[k] for r in rows if r[k] is not None]
        return round(statistics.median(vals), 3) if vals else None

    return {"spawns": len(rows), **{f"median_{k}": med(k) for k in
                                    ("ready_s", "started_s", "first_token_s", "line_call_s",
                                     "cpu_s")},
            "min_first_token_s": min(r["first_token_s"] for r in rows),
            "max_first_token_s": max(r["first_token_s"] for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--variants", default="selective,plain,full")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads per worker")
    ap.add_argument("--slots", type=int, default=4, help="parallel slots per worker")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "batch_cold_start.json"))
    args = ap.parse_args()
    # as `make bytecode`: incremental, and what an installed wheel has anyway
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True,
                   stdout=subprocess.DEVNULL)
    result: dict[str, Any] = {
        "config": {"reps": args.reps, "threads": args.threads, "slots": args.slots,
                   "line": "short document (~40 tokens), json_schema (plain: none), "
                           "max_tokens=1",
                   "settings": "shipped defaults + [batch] enabled, autoscale=false",
                   "bytecode": "keel's modules compiled first (make bytecode)"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
        "variants": {}}
    for variant in args.variants.split(","):
        rows = run_variant(variant, args.reps, args.threads, args.slots)
        result["variants"][variant] = {"summary": summary(rows), "spawns": rows}
        print(variant, result["variants"][variant]["summary"], file=sys.stderr, flush=True)
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(orjson.dumps({k: v["summary"] for k, v in result["variants"].items()},
                       option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
