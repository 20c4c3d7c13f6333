"""Vector index speed: keel's usearch and Redis/Valkey backends vs exact numpy search.

20,000 random unit 384-d vectors in 20 tenants (1,000 each, 5% of the index) go into each
backend through ``upsert`` (batches of 1,000). Two query sets of 200 each:

* ``near``: a stored vector plus noise (cosine ~0.8 to it) -- what a semantic cache or RAG
  sees, since real embeddings cluster;
* ``random``: fresh random unit vectors -- the worst case for HNSW, where every point is
  almost equally far away.

For each backend: search p50/p99 (ms, one query at a time through the async API) without
and with a ``tenant`` filter, and recall@10 against exact search. The raw baseline is
exact numpy search on the calling thread (``X @ q`` + argpartition over the whole matrix,
or over the tenant's rows), timed in the same run. Redis is the Valkey + RediSearch
server from ``tests/services.py`` unless ``--redis-url`` is given.

Usage (repo root)::

    .venv/bin/python bench/vector_index_speed.py [--n 20000] [--queries 200]

Writes ``bench/results/vector_index_speed.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from keel.ports.vector_index import VectorIndex
from keel.storage.vector_redis import RedisVectorIndex
from keel.storage.vector_usearch import UsearchVectorIndex

ROOT = Path(__file__).resolve().parent.parent
DIM = 384
TENANTS = 20
K = 10


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def exact_top(matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = matrix @ q
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top])]


def pct(times: list[float], p: float) -> float:
    return float(np.percentile(np.array(times) * 1e3, p))


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from services import running_redis

    with running_redis() as server:
        yield server.url


async def run_backend(
    index: VectorIndex, data: np.ndarray, tenants: list[str], queries: dict[str, np.ndarray],
    query_tenants: list[str], truth: dict[str, list[set[int]]],
) -> dict[str, Any]:
    await index.create(DIM)
    ids = [str(i) for i in range(len(data))]
    t0 = time.perf_counter()
    for start in range(0, len(data), 1000):
        stop = start + 1000
        meta: list[dict[str, str | int | float]] = [
            {"tenant": t, "n": i} for i, t in enumerate(tenants[start:stop], start)
        ]
        await index.upsert(ids[start:stop], data[start:stop], meta)
    out: dict[str, Any] = {"insert_s": time.perf_counter() - t0}
    for qname, qs in queries.items():
        for filtered in (False, True):
            key = f"{qname}{'_filtered' if filtered else ''}"
            times, recalls = [], []
            for j, q in enumerate(qs):
                filters = {"tenant": query_tenants[j]} if filtered else None
                t = time.perf_counter()
                hits = await index.search(q, K, filters=filters)
                times.append(time.perf_counter() - t)
                assert not filtered or all(h.metadata["tenant"] == query_tenants[j] for h in hits)
                recalls.append(len({int(h.id) for h in hits} & truth[key][j]) / K)
            out[key] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99),
                        "recall_at_10": float(np.mean(recalls))}
    await index.aclose()
    return out


def baseline(data: np.ndarray, tenants: np.ndarray, queries: dict[str, np.ndarray],
             query_tenants: list[str]) -> tuple[dict[str, Any], dict[str, list[set[int]]]]:
    rows = {t: np.flatnonzero(tenants == t) for t in set(tenants.tolist())}
    parts = {t: data[r] for t, r in rows.items()}
    out: dict[str, Any] = {}
    truth: dict[str, list[set[int]]] = {}
    for qname, qs in queries.items():
        for filtered in (False, True):
            key = f"{qname}{'_filtered' if filtered else ''}"
            times, sets = [], []
            for j, q in enumerate(qs):
                t = time.perf_counter()
                if filtered:
                    top = rows[query_tenants[j]][exact_top(parts[query_tenants[j]], q, K)]
                else:
                    top = exact_top(data, q, K)
                times.append(time.perf_counter() - t)
                sets.append({int(i) for i in top})
            out[key] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99), "recall_at_10": 1.0}
            truth[key] = sets
    return out, truth


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--redis-url", default=os.environ.get("KEEL_BENCH_REDIS_URL"))
    args = ap.parse_args()
    console = Console(width=120)
    rng = np.random.default_rng(0)
    data = unit(rng.standard_normal((args.n, DIM)))
    tenant_arr = np.array([f"tenant-{i % TENANTS}" for i in range(args.n)])
    picks = rng.integers(0, args.n, args.queries)
    queries = {
        "near": unit(data[picks] + 0.04 * rng.standard_normal((args.queries, DIM))),
        "random": unit(rng.standard_normal((args.queries, DIM))),
    }
    query_tenants = [str(tenant_arr[p]) for p in picks]
    base, truth = baseline(data, tenant_arr, queries, query_tenants)
    results: dict[str, Any] = {"numpy_exact": base}
    tenants = tenant_arr.tolist()
    with tempfile.TemporaryDirectory(prefix="keel-vec-bench-") as tmp:
        console.print(f"[bold]usearch[/] inserting {args.n} x {DIM}...")
        results["usearch"] = await run_backend(
            UsearchVectorIndex(Path(tmp), "bench"), data, tenants, queries, query_tenants, truth)
    with redis_server(args.redis_url) as url:
        console.print(f"[bold]redis[/] inserting {args.n} x {DIM}...")
        results["redis"] = await run_backend(
            RedisVectorIndex(url, "bench", prefix="keel-bench:vec:"), data, tenants, queries,
            query_tenants, truth)
    table = Table(title=f"VectorIndex search, {args.n} x {DIM}-d, k={K}, "
                        f"filter = 1 of {TENANTS} tenants")
    for col in ("backend", "insert s", "queries", "filter", "p50 ms", "p99 ms",
                "x numpy p50", "recall@10"):
        table.add_column(col, justify="left" if col in ("backend", "queries") else "right")
    for backend, res in results.items():
        for key, row in res.items():
            if key == "insert_s":
                continue
            ratio = row["p50_ms"] / base[key]["p50_ms"]
            table.add_row(backend, f"{res.get('insert_s', 0):.1f}" if "insert_s" in res else "-",
                          key.split("_")[0], "tenant" if "filtered" in key else "none",
                          f"{row['p50_ms']:.3f}", f"{row['p99_ms']:.3f}", f"{ratio:.2f}",
                          f"{row['recall_at_10']:.3f}")
    console.print(table)
    payload = {
        "bench": "vector_index_speed",
        "n": args.n, "dim": DIM, "k": K, "tenants": TENANTS, "queries": args.queries,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
        "results": results,
    }
    out = ROOT / "bench" / "results" / "vector_index_speed.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
