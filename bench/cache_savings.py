"""Replay a realistic query stream through the gateway with the local model; report the
cache's hit rate, latency of hits vs misses, and USD saved.

Stream: paraphrase clusters from ``datasets/semantic_cache/gptcache_mock_pairs.jsonl`` (an
original sentence and its LLM-written paraphrase), drawn with a Zipf distribution (s=1.2)
over the clusters, each draw asking about the original (50%), the paraphrase (30%) or the
original lower-cased without punctuation (20%). The local Gemma 3 270M answers misses
(max_tokens 48); it is priced like a small hosted model (0.15 / 0.60 USD per 1M tokens) so
the savings are visible. Baseline in the same run: what every request would have cost and
taken had it missed (spend + savings; miss latency).

``--stream support``: the paraphrase-heavy stream. Clusters are the support questions of
``bench/data/support_paraphrases.jsonl`` joined by their labelled paraphrases (the
near-miss negatives are clusters of their own, so "enable 2FA" and "disable 2FA" are asked
in the same stream); each draw picks a cluster (Zipf) and then one of its wordings at random.
A hit is false when the answer served was first produced for a question of another cluster
(answers are matched by text; answers two clusters share are counted as ambiguous).

    .venv/bin/python bench/cache_savings.py [--stream gptcache|support] [--requests 300]
        [--clusters 120]

Writes bench/results/cache_savings.json (gptcache) or cache_savings_support.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import onnxruntime  # noqa: F401  (first, on the main thread)
from rich.console import Console
from rich.progress import track
from rich.table import Table

from keel.app import build_services, create_app
from keel.cache.stage import CacheStage
from keel.config import load_settings
from keel.gateway.background import serving

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "semantic_cache" / "gptcache_mock_pairs.jsonl"
SUPPORT = ROOT / "bench" / "data" / "support_paraphrases.jsonl"
OUT = ROOT / "bench" / "results" / "cache_savings.json"
console = Console()


def support_stream(n: int, clusters: int, seed: int = 5) -> list[tuple[str, int]]:
    """(question, cluster id) draws over the support set's paraphrase clusters."""
    rows = [json.loads(line) for line in SUPPORT.read_text().splitlines()]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for r in rows:
        find(r["text_a"]), find(r["text_b"])
        if r["label"]:
            parent[find(r["text_b"])] = find(r["text_a"])
    groups: dict[str, list[str]] = {}
    for text in parent:
        groups.setdefault(find(text), []).append(text)
    members = sorted(groups.values(), key=lambda g: (-len(g), g[0]))[:clusters]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(members))  # Zipf ranks not tied to cluster size
    weights = 1.0 / np.arange(1, len(members) + 1) ** 1.2
    picks = rng.choice(len(members), size=n, p=weights / weights.sum())
    out = []
    for c in picks:
        g = members[int(order[int(c)])]
        out.append((g[int(rng.integers(len(g)))], int(order[int(c)])))
    return out


def stream(n: int, clusters: int, seed: int = 5) -> list[str]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()][:clusters]
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.2
    picks = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = []
    for c in picks:
        r, u = rows[int(c)], rng.random()
        text = r["text_a"] if u < 0.5 else r["text_b"] if u < 0.8 else \
            re.sub(r"[^\w\s-]", "", r["text_a"]).lower()
        out.append(f"In one sentence, what does this mean? {text}")
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clusters", type=int, default=120)
    ap.add_argument("--stream", choices=("gptcache", "support"), default="gptcache")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="keel-savings-"))
    os.chdir(tmp)
    settings = load_settings(None, data_dir=str(tmp / "data"),
                             models_dir=str(ROOT / ".keel" / "models"),
                             local={"input_usd_per_1m": 0.15, "output_usd_per_1m": 0.60},
                             tools={"enabled": False})
    svc = build_services(settings)
    key = svc.keys.create("bench").secret
    app = create_app(settings, services=svc)
    if args.stream == "support":
        drawn = support_stream(args.requests, args.clusters)
    else:
        drawn = [(q, -1) for q in stream(args.requests, args.clusters)]
    answered_for: dict[str, set[int]] = {}  # answer text -> clusters it was produced for
    results = []
    with serving(app) as base:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
            for q, cluster in track(drawn, description="replaying"):
                body = {"model": "gemma-3-270m", "max_tokens": 48, "temperature": 0,
                        "messages": [{"role": "user", "content": q}]}
                t = time.perf_counter()
                async with s.post(base + "/v1/chat/completions", json=body) as r:
                    payload = json.loads(await r.read())
                    assert r.status == 200, payload
                    answer = payload["choices"][0]["message"]["content"] or ""
                    state = r.headers.get("x-keel-cache", "")
                    if state != "hit":
                        answered_for.setdefault(answer, set()).add(cluster)
                        verdict = ""
                    else:
                        origin = answered_for.get(answer, set())
                        verdict = ("ambiguous" if len(origin) > 1 else "true"
                                   if origin == {cluster} else "false")
                    results.append({"query": q, "verdict": verdict,
                        "ms": (time.perf_counter() - t) * 1000,
                        "state": r.headers.get("x-keel-cache", ""),
                        "layer": r.headers.get("x-keel-cache-layer", ""),
                        "cost": float(r.headers.get("x-keel-cost-usd", 0)),
                        "saved": float(r.headers.get("x-keel-saved-usd", 0))})
                await svc.get(CacheStage).drain()
    hits = [r for r in results if r["state"] == "hit"]
    misses = [r for r in results if r["state"] != "hit"]
    spent = sum(r["cost"] for r in results)
    saved = sum(r["saved"] for r in results)
    summary = {
        "stream": args.stream, "requests": len(results), "clusters": args.clusters,
        "profile": settings.cache.profile,
        "threshold": settings.cache.threshold_for(settings.cache.namespaces["default"]),
        "false_hits": sum(r["verdict"] == "false" for r in hits) if args.stream == "support"
        else None,
        "ambiguous_hits": sum(r["verdict"] == "ambiguous" for r in hits),
        "hit_rate": round(len(hits) / len(results), 4),
        "exact_hits": sum(r["layer"] == "exact" for r in hits),
        "semantic_hits": sum(r["layer"] == "semantic" for r in hits),
        "hit_p50_ms": round(statistics.median(r["ms"] for r in hits), 2) if hits else None,
        "miss_p50_ms": round(statistics.median(r["ms"] for r in misses), 1) if misses else None,
        "usd_spent": round(spent, 8), "usd_saved": round(saved, 8),
        "usd_without_cache": round(spent + saved, 8),
        "saved_share": round(saved / (spent + saved), 4) if spent + saved else 0.0,
        "wall_s_with_cache": round(sum(r["ms"] for r in results) / 1000, 1),
        "wall_s_estimated_without": round(
            len(results) * statistics.median(r["ms"] for r in misses) / 1000, 1)
        if misses else None,
    }
    t = Table(title=f"{len(results)} requests, Zipf over {args.clusters} {args.stream} "
                    "paraphrase clusters, local Gemma 3 270M")
    for k in ("profile", "threshold", "false_hits", "ambiguous_hits",
              "hit_rate", "exact_hits", "semantic_hits", "hit_p50_ms", "miss_p50_ms",
              "usd_spent", "usd_saved", "saved_share", "wall_s_with_cache",
              "wall_s_estimated_without"):
        t.add_row(k, str(summary[k]))
    console.print(t)
    summary["false_hit_examples"] = [r["query"] for r in hits if r["verdict"] == "false"][:10]
    out = OUT if args.stream == "gptcache" else OUT.with_name("cache_savings_support.json")
    out.write_text(json.dumps(summary, indent=1))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
