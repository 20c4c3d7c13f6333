"""Embedding speed: keel's MiniLMEmbedder vs the raw onnxruntime path, numpy and torch.

Sentences are QQP questions (``text_a``/``text_b`` of
``../shared/datasets/semantic_cache/qqp_pairs.jsonl``), shuffled with a fixed seed. Every
target embeds the same texts, all in one run:

* ``keel``: ``MiniLMEmbedder.embed`` from an event loop (validation, the worker-thread hop,
  length sorting, per-batch padding, onnxruntime);
* ``raw-ort``: the baseline -- the same tokenizer, padding and onnxruntime session called
  directly on the calling thread, no wrapper;
* ``numpy``: a plain float32 numpy forward pass of the same weights (matmul + erf GELU),
  the alternative to onnxruntime that keel did not pick;
* ``torch``: transformers ``BertModel`` + mean pooling, run with ``/tmp/refvenv/bin/python``
  when that scratch venv exists (torch is never installed in keel's venv); skipped if not.

Batch 1 is reported as ms per sentence (mean, p50, p99); batch 64 as sentences per
second over calls of 64 texts in dataset order (each batch padded to its longest text);
"bulk" as sentences per second when all batched texts are embedded sorted by length
(keel: one ``embed`` call that sorts and splits into batches of 64; the others: the same
sorted batches). Each target is also checked against ``raw-ort`` (max abs difference).
The box is shared, so targets run in interleaved rounds (the order rotates each round) and
each figure is the best round's: other load only ever slows a run down. Every round is kept
in the JSON, with the 1-minute load average before and after.

Usage (repo root)::

    .venv/bin/python bench/embeddings_speed.py            # 3 rounds, 100 single + 512 batched
    .venv/bin/python bench/embeddings_speed.py --quick    # smoke run, 1 round

Writes ``bench/results/embeddings_speed.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from keel.providers.embeddings import (
    DIM,
    MiniLMEmbedder,
    build_graph,
    load_tokenizer,
    load_weights,
    model_dir,
    open_session,
    pad_batch,
    token_ids,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "embeddings_speed.json"
DATASET = REPO.parent / "shared" / "datasets" / "semantic_cache" / "qqp_pairs.jsonl"
TORCH_PY = Path("/tmp/refvenv/bin/python")

Embed = Callable[[list[str]], npt.NDArray[np.float32]]

TORCH_WORKER = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoTokenizer, BertModel
model_dir, data_path, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = json.load(open(data_path))
tok = AutoTokenizer.from_pretrained(model_dir)
model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()

def embed(texts):
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, p=2, dim=1).numpy()

def one_round():
    for t in data["single"][:warmup]:
        embed([t])
    single_s = []
    for t in data["single"]:
        t0 = time.perf_counter(); embed([t]); single_s.append(time.perf_counter() - t0)
    embed(data["batches"][0])
    t0 = time.perf_counter()
    for b in data["batches"]:
        embed(b)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in data["sorted"]:
        embed(b)
    return {"single_s": single_s, "batched_s": batched_s, "bulk_s": time.perf_counter() - t0}

print(json.dumps({"version": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}),
      flush=True)
for line in sys.stdin:
    out = one_round() if line.strip() == "run" else {"check": embed(data["check"]).tolist()}
    print(json.dumps(out), flush=True)
"""


# -- data ---------------------------------------------------------------------------------


def load_sentences(path: Path, n: int, seed: int) -> list[str]:
    seen: set[str] = set()
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for key in ("text_a", "text_b"):
                t = str(row[key]).strip()
                if t and t not in seen:
                    seen.add(t)
                    texts.append(t)
    random.Random(seed).shuffle(texts)
    if len(texts) < n:
        raise SystemExit(f"{path} has only {len(texts)} distinct sentences, need {n}")
    return texts[:n]


# -- the numpy alternative ----------------------------------------------------------------


def _erf(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # Abramowitz & Stegun 7.1.26, |error| < 1.5e-7
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
            + 0.254829592) * t
    out: npt.NDArray[Any] = np.sign(x) * (1.0 - poly * np.exp(-a * a))
    return out


def _layer_norm(x: npt.NDArray[Any], w: npt.NDArray[Any],
                b: npt.NDArray[Any]) -> npt.NDArray[Any]:
    x = x - x.mean(-1, keepdims=True)
    out: npt.NDArray[Any] = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-12) * w + b
    return out


class NumpyMiniLM:
    """float32 numpy forward pass of the MiniLM encoder, batched, fused QKV matmul."""

    def __init__(self, weights: dict[str, npt.NDArray[Any]]) -> None:
        w = {k: v.astype(np.float32) for k, v in weights.items() if v.dtype != np.int64}
        scale = np.float32(1 / math.sqrt(DIM // 12))
        self.word = w["embeddings.word_embeddings.weight"]
        self.pos = w["embeddings.position_embeddings.weight"] + w[
            "embeddings.token_type_embeddings.weight"][0]
        self.ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers: list[dict[str, npt.NDArray[np.float32]]] = []
        for i in range(6):
            p = f"encoder.layer.{i}."
            qkv_w = [w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")]
            qkv_b = [w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
            qkv_w[0], qkv_b[0] = qkv_w[0] * scale, qkv_b[0] * scale
            self.layers.append({
                "qkv_w": np.ascontiguousarray(np.concatenate(qkv_w).T),
                "qkv_b": np.concatenate(qkv_b),
                "o_w": np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                "o_b": w[p + "attention.output.dense.bias"],
                "ln1_w": w[p + "attention.output.LayerNorm.weight"],
                "ln1_b": w[p + "attention.output.LayerNorm.bias"],
                "i_w": np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                "i_b": w[p + "intermediate.dense.bias"],
                "f_w": np.ascontiguousarray(w[p + "output.dense.weight"].T),
                "f_b": w[p + "output.dense.bias"],
                "ln2_w": w[p + "output.LayerNorm.weight"],
                "ln2_b": w[p + "output.LayerNorm.bias"],
            })

    def __call__(self, ids: npt.NDArray[np.int64],
                 mask: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        b, n = ids.shape
        x = _layer_norm(self.word[ids] + self.pos[:n], *self.ln).reshape(b * n, DIM)
        bias = ((1.0 - mask.astype(np.float32)) * np.float32(-1e4))[:, None, None, :]
        for ly in self.layers:
            qkv = (x @ ly["qkv_w"] + ly["qkv_b"]).reshape(b, n, 3, 12, 32)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)
            s = q @ k.transpose(0, 1, 3, 2) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b * n, DIM)
            x = _layer_norm(x + ctx @ ly["o_w"] + ly["o_b"], ly["ln1_w"], ly["ln1_b"])
            h = x @ ly["i_w"] + ly["i_b"]
            h = 0.5 * h * (1.0 + _erf(h * np.float32(1 / math.sqrt(2))))
            x = _layer_norm(x + h @ ly["f_w"] + ly["f_b"], ly["ln2_w"], ly["ln2_b"])
        m = mask.astype(np.float32)[:, :, None]
        e = (x.reshape(b, n, DIM) * m).sum(1)
        out: npt.NDArray[np.float32] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(
            np.float32)
        return out


# -- measuring ----------------------------------------------------------------------------


class Round(TypedDict):
    single_s: list[float]
    batched_s: float
    bulk_s: float


@dataclass
class Target:
    name: str
    run: Callable[[], Round]
    check: Callable[[], npt.NDArray[np.float32]]
    close: Callable[[], None] = lambda: None
    rounds: list[Round] = field(default_factory=list)


@dataclass
class Workload:
    single: list[str]
    batches: list[list[str]]  # dataset order, batch-sized
    sorted_batches: list[list[str]]  # the same texts sorted by token count
    rest: list[str]  # all batched texts, dataset order
    check: list[str]
    warmup: int = 5


def measure(embed: Embed, bulk: Callable[[], object], w: Workload) -> Round:
    for t in w.single[: w.warmup]:
        embed([t])
    single_s = []
    for t in w.single:
        t0 = time.perf_counter()
        embed([t])
        single_s.append(time.perf_counter() - t0)
    embed(w.batches[0])
    t0 = time.perf_counter()
    for b in w.batches:
        embed(b)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bulk()
    return {"single_s": single_s, "batched_s": batched_s, "bulk_s": time.perf_counter() - t0}


def summarize(r: Round, n_batched: int) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in r["single_s"])
    return {
        "batch1_ms_mean": statistics.fmean(ms),
        "batch1_ms_p50": ms[len(ms) // 2],
        "batch1_ms_p99": ms[min(len(ms) - 1, math.ceil(len(ms) * 0.99) - 1)],
        "batch64_sent_per_s": n_batched / r["batched_s"],
        "bulk_sent_per_s": n_batched / r["bulk_s"],
    }


def best_of(rounds: list[Round], n_batched: int) -> dict[str, float]:
    """Each figure from the round where it was best: the box is shared, noise only slows."""
    per_round = [summarize(r, n_batched) for r in rounds]
    b1 = min(per_round, key=lambda s: s["batch1_ms_mean"])
    return {
        "batch1_ms_mean": b1["batch1_ms_mean"],
        "batch1_ms_p50": b1["batch1_ms_p50"],
        "batch1_ms_p99": b1["batch1_ms_p99"],
        "batch64_sent_per_s": max(s["batch64_sent_per_s"] for s in per_round),
        "bulk_sent_per_s": max(s["bulk_sent_per_s"] for s in per_round),
    }


# -- targets ------------------------------------------------------------------------------


def raw_target(w: Workload, threads: int, cold: dict[str, float]) -> Target:
    directory = model_dir()
    tokenizer = load_tokenizer(directory)
    t0 = time.perf_counter()
    graph = build_graph(load_weights(directory))
    cold["build_graph_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    session = open_session(graph, threads)
    cold["open_session_s"] = time.perf_counter() - t0

    def raw(batch: list[str]) -> npt.NDArray[np.float32]:
        ids, mask = pad_batch(token_ids(tokenizer, batch))
        out = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)

    return Target("raw-ort", lambda: measure(raw, lambda: [raw(b) for b in w.sorted_batches], w),
                  lambda: raw(w.check))


def keel_target(w: Workload, batch: int, threads: int, cache: Path,
                cold: dict[str, float]) -> Target:
    loop = asyncio.new_event_loop()
    first = MiniLMEmbedder(cache, max_batch=batch, threads=threads)
    t0 = time.perf_counter()
    loop.run_until_complete(first.embed(["cold start"]))
    cold["keel_first_call_build_s"] = time.perf_counter() - t0
    first.close()
    emb = MiniLMEmbedder(cache, max_batch=batch, threads=threads)
    t0 = time.perf_counter()
    loop.run_until_complete(emb.embed(["cold start"]))
    cold["keel_first_call_cached_s"] = time.perf_counter() - t0

    def keel(texts: list[str]) -> npt.NDArray[np.float32]:
        return loop.run_until_complete(emb.embed(texts))

    def close() -> None:
        emb.close()
        loop.close()

    # bulk: one call with every text; keel sorts by length and splits into batches itself
    return Target("keel", lambda: measure(keel, lambda: keel(w.rest), w),
                  lambda: keel(w.check), close)


def numpy_target(w: Workload) -> Target:
    directory = model_dir()
    tokenizer = load_tokenizer(directory)
    model = NumpyMiniLM(load_weights(directory))

    def embed(batch: list[str]) -> npt.NDArray[np.float32]:
        return model(*pad_batch(token_ids(tokenizer, batch)))

    return Target("numpy", lambda: measure(embed, lambda: [embed(b) for b in w.sorted_batches],
                                           w), lambda: embed(w.check))


class TorchWorker:
    """transformers in the scratch venv, kept alive across rounds, driven over stdin."""

    def __init__(self, w: Workload, tmp: Path) -> None:
        data = tmp / "torch_data.json"
        data.write_text(json.dumps({"single": w.single, "batches": w.batches,
                                    "sorted": w.sorted_batches, "check": w.check}))
        script = tmp / "torch_worker.py"
        script.write_text(TORCH_WORKER)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        self.proc = subprocess.Popen(
            [str(TORCH_PY), str(script), str(model_dir()), str(data), str(w.warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )
        self.version = str(self._read()["version"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch worker exited with {self.proc.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self) -> Round:
        r = self.ask("run")
        return {"single_s": r["single_s"], "batched_s": r["batched_s"], "bulk_s": r["bulk_s"]}

    def check(self) -> npt.NDArray[np.float32]:
        return np.asarray(self.ask("check")["check"], dtype=np.float32)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- main ---------------------------------------------------------------------------------


def make_workload(args: argparse.Namespace) -> tuple[Workload, list[int]]:
    texts = load_sentences(DATASET, args.single + args.batched, args.seed)
    single, rest = texts[: args.single], texts[args.single :]
    lengths = [len(r) for r in token_ids(load_tokenizer(model_dir()), texts)]
    length_of = dict(zip(texts, lengths, strict=True))  # texts are distinct
    by_length = sorted(rest, key=length_of.__getitem__)
    chunks = range(0, len(rest), args.batch)
    w = Workload(
        single=single,
        batches=[rest[i : i + args.batch] for i in chunks],
        sorted_batches=[by_length[i : i + args.batch] for i in chunks],
        rest=rest,
        check=texts[: args.batch],
    )
    return w, lengths


def render(console: Console, report: dict[str, Any], batch: int) -> None:
    table = Table(title=f"all-MiniLM-L6-v2, {report['machine']['cpus']} cores, "
                        f"{report['tokens_per_sentence']['mean']:.1f} tokens/sentence, "
                        f"best of {report['params']['rounds']} interleaved rounds")
    cols = ("target", "b1 ms", "b1 p99", "b1 x raw", f"b{batch}/s", f"b{batch} x raw",
            "bulk/s", "bulk x raw", "max|diff|")
    for col in cols:
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, r in report["results"].items():
        table.add_row(name, f"{r['batch1_ms_mean']:.2f}", f"{r['batch1_ms_p99']:.2f}",
                      f"{r['batch1_vs_raw']:.2f}", f"{r['batch64_sent_per_s']:.0f}",
                      f"{r['batch64_vs_raw']:.2f}", f"{r['bulk_sent_per_s']:.0f}",
                      f"{r['bulk_vs_raw']:.2f}", f"{r['max_abs_diff_vs_raw']:.0e}")
    console.print(table)
    console.print("cold start (s): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in report["cold_start"].items()))
    load = report["load_avg_1m"]
    console.print(f"load average (1 min): {load['before']:.1f} before, {load['after']:.1f} after")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--single", type=int, default=100, help="sentences embedded one at a time")
    ap.add_argument("--batched", type=int, default=512, help="sentences embedded in batches")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per target")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads, 0 = all")
    ap.add_argument("--targets", default="keel,numpy,torch", help="raw-ort always runs")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1 round, 20 single, 128 batched")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.single, args.batched, args.rounds = 20, 128, 1
    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    console = Console(width=120)
    w, lengths = make_workload(args)
    cold: dict[str, float] = {}
    torch_version = None

    with tempfile.TemporaryDirectory() as tmp:
        targets = [raw_target(w, args.threads, cold)]
        if "keel" in wanted:
            targets.append(keel_target(w, args.batch, args.threads, Path(tmp), cold))
        if "numpy" in wanted:
            targets.append(numpy_target(w))
        if "torch" in wanted:
            if TORCH_PY.exists():
                worker = TorchWorker(w, Path(tmp))
                torch_version = worker.version
                targets.append(Target("torch", worker.run, worker.check, worker.close))
            else:
                console.print(f"[yellow]torch skipped: {TORCH_PY} not found[/]")
        load_before = os.getloadavg()[0]
        for k in range(args.rounds):  # rotate the order so no target always goes first
            for t in targets[k % len(targets) :] + targets[: k % len(targets)]:
                console.print(f"round {k + 1}/{args.rounds}: {t.name}")
                t.rounds.append(t.run())
        load_after = os.getloadavg()[0]
        outputs = {t.name: t.check() for t in targets}
        for t in targets:
            t.close()

    n = len(w.rest)
    results = {t.name: best_of(t.rounds, n) for t in targets}
    base = results["raw-ort"]
    for name, r in results.items():
        r["batch1_vs_raw"] = r["batch1_ms_mean"] / base["batch1_ms_mean"]
        r["batch64_vs_raw"] = r["batch64_sent_per_s"] / base["batch64_sent_per_s"]
        r["bulk_vs_raw"] = r["bulk_sent_per_s"] / base["bulk_sent_per_s"]
        r["max_abs_diff_vs_raw"] = float(np.abs(outputs[name] - outputs["raw-ort"]).max())

    report: dict[str, Any] = {
        "bench": "embeddings_speed",
        "model": "all-MiniLM-L6-v2",
        "dim": DIM,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "dataset": str(DATASET.relative_to(REPO.parent)),
        "params": {"single": args.single, "batched": args.batched, "batch": args.batch,
                   "rounds": args.rounds, "threads": args.threads, "seed": args.seed,
                   "warmup": w.warmup},
        "tokens_per_sentence": {"mean": statistics.fmean(lengths), "max": max(lengths),
                                "p50": sorted(lengths)[len(lengths) // 2]},
        "cold_start": cold,
        "load_avg_1m": {"before": load_before, "after": load_after},
        "torch": torch_version,
        "baseline": "raw-ort",
        "results": results,
        "rounds": {t.name: [summarize(r, n) for r in t.rounds] for t in targets},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    render(console, report, args.batch)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
