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
The 1-minute load average is recorded: on a shared 2-core box, compare within one run.

Usage (repo root)::

    .venv/bin/python bench/embeddings_speed.py            # 200 single + 1024 batched
    .venv/bin/python bench/embeddings_speed.py --quick    # smoke run

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from keel.providers.embeddings import (
    DIM,
    MAX_TOKENS,
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

TORCH_SCRIPT = r"""
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

for t in data["single"][:warmup]:
    embed([t])
single_s = []
for t in data["single"]:
    t0 = time.perf_counter(); embed([t]); single_s.append(time.perf_counter() - t0)
embed(data["batches"][0])
t0 = time.perf_counter()
rows = [embed(b) for b in data["batches"]]
batched_s = time.perf_counter() - t0
t0 = time.perf_counter()
rows = [embed(b) for b in data["sorted"]]
bulk_s = time.perf_counter() - t0
print(json.dumps({"single_s": single_s, "batched_s": batched_s, "bulk_s": bulk_s,
                  "check": embed(data["check"]).tolist(),
                  "version": f"torch {torch.__version__}, threads {torch.get_num_threads()}"}))
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


def summarize(single_s: Sequence[float], batched_s: float, bulk_s: float,
              n_batched: int) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in single_s)
    return {
        "batch1_ms_mean": statistics.fmean(ms),
        "batch1_ms_p50": ms[len(ms) // 2],
        "batch1_ms_p99": ms[min(len(ms) - 1, math.ceil(len(ms) * 0.99) - 1)],
        "batch64_sent_per_s": n_batched / batched_s,
        "batch64_ms_per_sent": batched_s / n_batched * 1e3,
        "bulk_sent_per_s": n_batched / bulk_s,
    }


def measure(embed: Embed, single: list[str], batches: list[list[str]],
            bulk: Callable[[], object], warmup: int) -> tuple[list[float], float, float]:
    for t in single[:warmup]:
        embed([t])
    single_s = []
    for t in single:
        t0 = time.perf_counter()
        embed([t])
        single_s.append(time.perf_counter() - t0)
    embed(batches[0])
    t0 = time.perf_counter()
    for b in batches:
        embed(b)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    bulk()
    return single_s, batched_s, time.perf_counter() - t0


def run_torch(single: list[str], batches: list[list[str]], sorted_batches: list[list[str]],
              check: list[str], warmup: int) -> dict[str, Any] | None:
    if not TORCH_PY.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.json"
        data.write_text(json.dumps({"single": single, "batches": batches,
                                    "sorted": sorted_batches, "check": check}))
        script = Path(tmp) / "torch_bench.py"
        script.write_text(TORCH_SCRIPT)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        proc = subprocess.run(
            [str(TORCH_PY), str(script), str(model_dir()), str(data), str(warmup)],
            capture_output=True, text=True, env=env, check=False,
        )
    if proc.returncode != 0:
        print(f"torch target failed, skipped:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single", type=int, default=200, help="sentences embedded one at a time")
    ap.add_argument("--batched", type=int, default=1024, help="sentences embedded in batches")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads, 0 = all")
    ap.add_argument("--targets", default="keel,raw-ort,numpy,torch")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="40 single, 256 batched")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.single, args.batched = 40, 256
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    warmup = 5
    console = Console()

    texts = load_sentences(DATASET, args.single + args.batched, args.seed)
    single, rest = texts[: args.single], texts[args.single :]
    batches = [rest[i : i + args.batch] for i in range(0, len(rest), args.batch)]
    check = texts[: args.batch]

    directory = model_dir()
    tokenizer = load_tokenizer(directory)
    lengths = [min(len(e.ids), MAX_TOKENS) for e in tokenizer.encode_batch(texts)]
    by_length = sorted(range(len(rest)), key=lambda i: lengths[args.single + i])
    sorted_rest = [rest[i] for i in by_length]
    sorted_batches = [sorted_rest[i : i + args.batch] for i in range(0, len(rest), args.batch)]
    load_before = os.getloadavg()[0]

    def tokenize(batch: list[str]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return pad_batch(token_ids(tokenizer, batch))

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, npt.NDArray[np.float32]] = {}
    cold: dict[str, float] = {}

    # raw onnxruntime baseline (always measured: everything is compared with it)
    t0 = time.perf_counter()
    weights = load_weights(directory)
    graph = build_graph(weights)
    cold["build_graph_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    session = open_session(graph, args.threads)
    cold["open_session_s"] = time.perf_counter() - t0

    def raw(batch: list[str]) -> npt.NDArray[np.float32]:
        ids, mask = tokenize(batch)
        out = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return np.asarray(out, dtype=np.float32)

    console.print("[bold]raw-ort[/] ...")
    results["raw-ort"] = summarize(
        *measure(raw, single, batches, lambda: [raw(b) for b in sorted_batches], warmup),
        len(rest))
    outputs["raw-ort"] = raw(check)

    if "keel" in targets:
        with tempfile.TemporaryDirectory() as cache:
            loop = asyncio.new_event_loop()
            emb = MiniLMEmbedder(Path(cache), max_batch=args.batch, threads=args.threads)
            t0 = time.perf_counter()
            loop.run_until_complete(emb.embed(["cold start"]))
            cold["keel_first_call_build_s"] = time.perf_counter() - t0
            emb.close()
            emb = MiniLMEmbedder(Path(cache), max_batch=args.batch, threads=args.threads)
            t0 = time.perf_counter()
            loop.run_until_complete(emb.embed(["cold start"]))
            cold["keel_first_call_cached_s"] = time.perf_counter() - t0

            def keel(batch: list[str]) -> npt.NDArray[np.float32]:
                return loop.run_until_complete(emb.embed(batch))

            console.print("[bold]keel[/] ...")
            results["keel"] = summarize(
                *measure(keel, single, batches, lambda: keel(rest), warmup), len(rest))
            outputs["keel"] = keel(check)
            emb.close()
            loop.close()

    if "numpy" in targets:
        model = NumpyMiniLM(weights)

        def numpy_embed(batch: list[str]) -> npt.NDArray[np.float32]:
            return model(*tokenize(batch))

        console.print("[bold]numpy[/] ...")
        results["numpy"] = summarize(
            *measure(numpy_embed, single, batches,
                     lambda: [numpy_embed(b) for b in sorted_batches], warmup),
            len(rest))
        outputs["numpy"] = numpy_embed(check)

    torch_version = None
    if "torch" in targets:
        console.print("[bold]torch[/] ...")
        got = run_torch(single, batches, sorted_batches, check, warmup)
        if got is None:
            console.print(f"[yellow]torch skipped: {TORCH_PY} missing or failing[/]")
        else:
            results["torch"] = summarize(got["single_s"], got["batched_s"], got["bulk_s"],
                                         len(rest))
            outputs["torch"] = np.asarray(got["check"], dtype=np.float32)
            torch_version = got["version"]

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
                    "processor": platform.processor(), "python": platform.python_version()},
        "dataset": str(DATASET.relative_to(REPO.parent)),
        "params": {"single": args.single, "batched": args.batched, "batch": args.batch,
                   "threads": args.threads, "seed": args.seed, "warmup": warmup},
        "tokens_per_sentence": {"mean": statistics.fmean(lengths), "max": max(lengths),
                                "p50": sorted(lengths)[len(lengths) // 2]},
        "cold_start": cold,
        "load_avg_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "torch": torch_version,
        "baseline": "raw-ort",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    table = Table(title=f"all-MiniLM-L6-v2 on {os.cpu_count()} cores "
                        f"(mean {report['tokens_per_sentence']['mean']:.1f} tokens/sentence)")
    for col in ("target", "b1 ms mean", "b1 p50", "b1 p99", "b1 x raw", f"b{args.batch} sent/s",
                f"b{args.batch} x raw", "bulk sent/s", "bulk x raw", "max |diff|"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['batch1_ms_mean']:.2f}", f"{r['batch1_ms_p50']:.2f}",
                      f"{r['batch1_ms_p99']:.2f}", f"{r['batch1_vs_raw']:.2f}",
                      f"{r['batch64_sent_per_s']:.0f}", f"{r['batch64_vs_raw']:.2f}",
                      f"{r['bulk_sent_per_s']:.0f}", f"{r['bulk_vs_raw']:.2f}",
                      f"{r['max_abs_diff_vs_raw']:.1e}")
    console.print(table)
    console.print("cold start: " + ", ".join(f"{k} {v:.2f}" for k, v in cold.items()))
    console.print(f"load average (1 min) {load_before:.1f} before, "
                  f"{report['load_avg_1m']['after']:.1f} after; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
