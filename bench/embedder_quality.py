"""MiniLM int8 vs float32: speed at batch 1 and whether any decision changes.

keel's built-in embedder quantises the MiniLM graph's weight matrices to int8
(``[local] embedder_precision = "int8"``, the default). This bench runs both graphs in the
same process on the same texts and reports:

* speed: per-text latency at batch 1 on ONE thread for 17-23 word-piece questions (about
  20 tokens), the two graphs interleaved text by text so machine load hits both alike;
* agreement: cosine between the int8 and the float32 vector of every text;
* the semantic cache: per pair of ``datasets/semantic_cache/qqp_pairs.jsonl`` and
  ``bench/data/support_paraphrases.jsonl``, the cache's decision (cosine >= the profile's
  default threshold AND its verifier, phrase vectors from the same graph) under each graph:
  how many decisions differ, precision/recall of each, and the shift in cosine;
* the firewall: per row of the prompt-injection TEST split, the decision of both layers
  (signatures + semantic kNN margin >= the default threshold, the shipped corpus) under
  each graph: how many differ, detection and benign false-positive rate of each.

    .venv/bin/python bench/embedder_quality.py            # everything (a few minutes)
    .venv/bin/python bench/embedder_quality.py --quick    # 500 pairs / rows per set

Writes bench/results/embedder_quality.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401  (first, on the main thread)
from rich.console import Console
from rich.table import Table

from keel.cache import evaluate as ev
from keel.cache.profiles import make_verifier
from keel.cache.settings import DEFAULT_THRESHOLD
from keel.config import FirewallSettings
from keel.firewall.dataset import is_attack, load_rows
from keel.firewall.engine import Firewall
from keel.firewall.semantic import AttackCorpus, SemanticLayer
from keel.providers.embeddings import (
    MiniLMEmbedder,
    graph_path,
    load_tokenizer,
    model_dir,
    open_session,
    pad_batch,
    token_ids,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from firewall_eval import grouped, semantic_scores  # noqa: E402

MODELS = ROOT / ".keel" / "models"
SHARED = ROOT.parent / "shared" / "datasets"
PAIRS = {
    "QQP": SHARED / "semantic_cache" / "qqp_pairs.jsonl",
    "support paraphrases": ROOT / "bench" / "data" / "support_paraphrases.jsonl",
}
OUT = ROOT / "bench" / "results" / "embedder_quality.json"
console = Console()


def spread(items: list[Any], limit: int | None) -> list[Any]:
    """At most ``limit`` items taken evenly across the list (files are grouped by kind)."""
    if limit is None or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def speed(texts: list[str], reps: int) -> dict[str, Any]:
    """Batch-1 latency of both graphs on one thread, interleaved per text."""
    directory = model_dir()
    sessions = {p: open_session(graph_path(MODELS, directory, p), threads=1)
                for p in ("fp32", "int8")}
    rows = [r for r in token_ids(load_tokenizer(directory), texts) if 17 <= len(r) <= 23]
    times: dict[str, list[float]] = {p: [] for p in sessions}
    for _ in range(reps):
        for r in rows:
            ids, mask = pad_batch([r])
            feed = {"input_ids": ids, "attention_mask": mask}
            for p, s in sessions.items():
                t0 = time.perf_counter()
                s.run(["embedding"], feed)
                times[p].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"texts": len(rows), "runs_each": len(times["fp32"]),
                           "mean_tokens": round(float(np.mean([len(r) for r in rows])), 1)}
    for p, ts in times.items():
        ms = np.array(ts) * 1000
        out[p] = {"p50_ms": round(float(np.median(ms)), 3),
                  "p10_ms": round(float(np.percentile(ms, 10)), 3),
                  "min_ms": round(float(ms.min()), 3)}
    out["speedup_p50"] = round(out["fp32"]["p50_ms"] / out["int8"]["p50_ms"], 2)
    return out


async def cache_decisions(name: str, path: Path, fp32: MiniLMEmbedder, int8: MiniLMEmbedder,
                          limit: int | None) -> dict[str, Any]:
    pairs = spread(ev.load_pairs(path), limit)
    vecs = {}
    for label, emb in (("fp32", fp32), ("int8", int8)):
        a = await emb.embed([p.a for p in pairs])
        b = await emb.embed([p.b for p in pairs])
        vecs[label] = (a, b)
    agree = np.concatenate([(vecs["fp32"][i] * vecs["int8"][i]).sum(axis=1) for i in (0, 1)])
    sims = {lab: (a * b).sum(axis=1) for lab, (a, b) in vecs.items()}
    shift = np.abs(sims["int8"] - sims["fp32"])
    same = np.array([p.same for p in pairs], dtype=bool)
    out: dict[str, Any] = {
        "dataset": path.name, "pairs": len(pairs),
        "vector_cosine_int8_vs_fp32": {"min": round(float(agree.min()), 4),
                                       "p1": round(float(np.percentile(agree, 1)), 4),
                                       "mean": round(float(agree.mean()), 5)},
        "pair_similarity_shift": {"mean": round(float(shift.mean()), 4),
                                  "p99": round(float(np.percentile(shift, 99)), 4),
                                  "max": round(float(shift.max()), 4)},
        "profiles": {}}
    for profile in ("strict", "balanced"):
        verifier = make_verifier(profile)
        th = DEFAULT_THRESHOLD[profile]
        hits = {}
        for lab, emb in (("fp32", fp32), ("int8", int8)):
            phrases = await ev.phrase_vectors(emb, pairs, verifier)
            hits[lab] = (sims[lab] >= th) & ev.verified(pairs, verifier, phrases)
        differ = int((hits["fp32"] != hits["int8"]).sum())
        out["profiles"][profile] = {
            "threshold": th, "decisions_differ": differ,
            "fp32": ev.metrics(hits["fp32"], same), "int8": ev.metrics(hits["int8"], same)}
    return out


async def firewall_decisions(fp32: MiniLMEmbedder, int8: MiniLMEmbedder,
                             limit: int | None) -> dict[str, Any]:
    rows = spread(grouped(load_rows(split="test")), limit)
    settings = FirewallSettings()
    signatures = Firewall.build(FirewallSettings(semantic=False), None)
    sig = np.array([signatures.check_signatures([r["text"]]) is not None for r in rows])
    corpus = AttackCorpus.default()
    decisions, margins = {}, {}
    for lab, emb in (("fp32", fp32), ("int8", int8)):
        layer = SemanticLayer(emb, corpus, threshold=settings.semantic_threshold,
                              chunk_chars=settings.semantic_chunk_chars)
        scores = np.array([s for s, _ in await semantic_scores(layer, rows)])
        margins[lab] = scores
        decisions[lab] = sig | (scores >= settings.semantic_threshold)
    attack = np.array([is_attack(r) for r in rows])
    benign = np.array([r["label"] == "benign" for r in rows])

    def rates(d: np.ndarray) -> dict[str, float | None]:
        return {"detection": round(float(d[attack].mean()), 4) if attack.any() else None,
                "benign_fpr": round(float(d[benign].mean()), 4) if benign.any() else None}

    shift = np.abs(margins["int8"] - margins["fp32"])
    return {"rows": len(rows), "attacks": int(attack.sum()), "benign": int(benign.sum()),
            "threshold": settings.semantic_threshold,
            "decisions_differ": int((decisions["fp32"] != decisions["int8"]).sum()),
            "margin_shift": {"mean": round(float(shift.mean()), 4),
                             "p99": round(float(np.percentile(shift, 99)), 4),
                             "max": round(float(shift.max()), 4)},
            "fp32": rates(decisions["fp32"]), "int8": rates(decisions["int8"])}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 pairs/rows per set, 1 rep")
    args = ap.parse_args()
    limit = 500 if args.quick else None
    fp32 = MiniLMEmbedder(MODELS, precision="fp32")
    int8 = MiniLMEmbedder(MODELS, precision="int8")
    questions = [p.a for p in ev.load_pairs(PAIRS["QQP"])[:600]]
    with console.status("speed: batch 1, one thread, interleaved"):
        spd = speed(questions, 1 if args.quick else 3)
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_start": os.getloadavg()},
        "speed_batch1_one_thread": spd, "cache": {}}
    for name, path in PAIRS.items():
        with console.status(f"cache decisions: {name}"):
            result["cache"][name] = await cache_decisions(name, path, fp32, int8, limit)
    with console.status("firewall decisions: prompt-injection TEST split"):
        result["firewall"] = await firewall_decisions(fp32, int8, limit)
    result["machine"]["loadavg_at_end"] = os.getloadavg()

    t = Table(title="MiniLM int8 vs fp32 (same texts, same run)")
    for c in ("check", "fp32", "int8", "differ"):
        t.add_column(c, justify="right")
    t.add_row(f"p50 ms, batch 1, 1 thread, ~{spd['mean_tokens']} tokens",
              f"{spd['fp32']['p50_ms']:.2f}", f"{spd['int8']['p50_ms']:.2f}",
              f"{spd['speedup_p50']}x faster")
    for name, c in result["cache"].items():
        a = c["vector_cosine_int8_vs_fp32"]
        t.add_row(f"{name}: vector cosine int8 vs fp32", "", f"min {a['min']} mean {a['mean']}",
                  "")
        for prof, d in c["profiles"].items():
            t.add_row(f"{name}: cache {prof} P / R ({c['pairs']} pairs)",
                      f"{d['fp32']['precision']:.3f} / {d['fp32']['recall']:.3f}",
                      f"{d['int8']['precision']:.3f} / {d['int8']['recall']:.3f}",
                      str(d["decisions_differ"]))
    f = result["firewall"]
    t.add_row(f"firewall detection / benign FPR ({f['rows']} rows)",
              f"{f['fp32']['detection']} / {f['fp32']['benign_fpr']}",
              f"{f['int8']['detection']} / {f['int8']['benign_fpr']}",
              str(f["decisions_differ"]))
    console.print(t)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {OUT}")
    fp32.close()
    int8.close()


if __name__ == "__main__":
    asyncio.run(main())
