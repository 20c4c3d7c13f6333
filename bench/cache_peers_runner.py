"""Runs inside .bench-venv: GPTCache and redisvl SemanticCache hit decisions on question pairs.

Usage: ``.bench-venv/bin/python bench/cache_peers_runner.py INPUT.json > OUT.json``

INPUT: ``{"pairs": [{"id", "text_a", "text_b", "label"}...], "emb_a": [[384 floats]...],
"emb_b": [...], "redis_url": "redis://127.0.0.1:PORT" (optional)}``; ``emb_a``/``emb_b`` are
keel's unit-length all-MiniLM-L6-v2 vectors of text_a/text_b. Nothing is downloaded: each peer
gets an embedding function that looks the text up in that map, so every cache sees exactly
the same vectors as keel. OUT: ``{"peers": [{"name", "version", "threshold_used",
"decisions", "us_per_lookup", "notes"}...]}``; ``decisions[i]`` is true when the peer would
serve text_a's cached answer for the query text_b.

Protocol (the same for both peers, one entry per pair): the cache holds only pair i's text_a
(stored through the peer's own put/store API with the unique answer ``answer-<i>``); text_b is
looked up through its own get/check API with its own similarity evaluation and default
threshold; a hit counts only when the answer returned is ``answer-<i>``; the entry is then
removed so the next pair starts from an empty cache. ``us_per_lookup`` times the lookup call
alone (embedding lookup + vector search + threshold decision, no store or removal).

Defaults, read from the installed sources:

* GPTCache 0.1.44: ``Cache.init`` itself defaults to ``ExactMatchEvaluation`` (string
  equality, not a semantic cache). Its semantic set-up, ``adapter.api.init_similar_cache``
  (the README's "similar cache"), is used here: sqlite + faiss (``IDMap,Flat`` index with
  METRIC_L2, top_k=1), ``SearchDistanceEvaluation(max_distance=4.0, positive=False)`` and
  ``Config().similarity_threshold=0.8``. adapter.py hits when ``4 - clip(d, 0, 4) >=
  0.8 * (4 - 0)``, i.e. faiss squared L2 distance ``d <= 0.8``; for unit vectors
  ``d = 2 - 2 cos``, so a hit means cosine >= 0.6. Only the LRU capacity differs from that
  helper (raised above the pair count so eviction never runs during the benchmark).
* redisvl SemanticCache: ``distance_threshold=0.1`` in Redis COSINE distance (1 - cos), FLAT
  index, ``check`` is a VECTOR_RANGE query with that radius, num_results=1: a hit means
  cosine >= 0.9. Needs a Redis/Valkey with RediSearch at ``redis_url``; skipped without it.

Install into .bench-venv: ``gptcache==0.1.44 redisvl==0.28.0 faiss-cpu sqlalchemy`` (GPTCache
otherwise pip-installs faiss/sqlalchemy itself at import time).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import json
import logging
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DIM = 384
Vec = npt.NDArray[np.float32]
PROBE_TEXTS = {"dimension test"}  # redisvl's CustomVectorizer probes the dimension with this


class VectorMap:
    """text -> keel's precomputed embedding; counts texts it had to embed by itself."""

    def __init__(self, texts: list[str], vectors: Vec) -> None:
        self.table: dict[str, Vec] = dict(zip(texts, vectors, strict=True))
        self.unknown = 0

    def __call__(self, text: str, **_: Any) -> Vec:
        vec = self.table.get(text)
        if vec is None:
            if text not in PROBE_TEXTS:
                self.unknown += 1
            return np.full(DIM, DIM**-0.5, dtype=np.float32)
        return vec

    def as_list(self, text: str, **_: Any) -> list[float]:
        return [float(x) for x in self(text)]


def peer_result(
    name: str, threshold: str, decisions: list[bool], lookup_s: float, notes: str
) -> dict[str, Any]:
    return {
        "name": name,
        "version": importlib.metadata.version(name),
        "threshold_used": threshold,
        "decisions": decisions,
        "us_per_lookup": lookup_s / max(1, len(decisions)) * 1e6,
        "notes": notes,
    }


def agreement(decisions: list[bool], cosines: Vec, min_cos: float) -> str:
    same = sum(d == bool(c >= min_cos) for d, c in zip(decisions, cosines, strict=True))
    near = int(np.sum(np.abs(cosines - min_cos) < 1e-4))
    return (
        f"decisions equal the rule cos(emb_a, emb_b) >= {min_cos} on {same}/{len(decisions)} "
        f"pairs ({near} pairs lie within 1e-4 of the boundary, float rounding)"
    )


def run_gptcache(pairs: list[dict[str, Any]], emb: VectorMap, cosines: Vec) -> dict[str, Any]:
    import faiss
    from gptcache import Cache
    from gptcache.adapter.api import get, init_similar_cache, put
    from gptcache.manager import manager_factory

    class Embedding:  # what init_similar_cache wants from an embedding: dimension + function
        dimension = DIM

        @staticmethod
        def to_embeddings(text: str, **_: Any) -> Vec:
            return emb(text)

    faiss.omp_set_num_threads(1)  # OpenMP start-up dominated 1-vector searches (~5 ms -> 0.1)
    shm = Path("/dev/shm")  # sqlite commits on tmpfs: no fsync in the timed lookups
    data_dir = tempfile.mkdtemp(prefix="gptcache_", dir=shm if shm.is_dir() else None)
    atexit.register(shutil.rmtree, data_dir, True)  # runs after Cache's own atexit flush
    dm = manager_factory(
        "sqlite,faiss",
        data_dir=data_dir,
        max_size=len(pairs) + 16,
        vector_params={"dimension": DIM},
    )
    cache = Cache()
    init_similar_cache(cache_obj=cache, embedding=Embedding(), data_manager=dm)
    decisions: list[bool] = []
    lookup_s = 0.0
    t_all = time.perf_counter()
    for i, pair in enumerate(pairs):
        answer = f"answer-{i}"
        put(pair["text_a"], answer, cache_obj=cache)
        t0 = time.perf_counter()
        got = get(pair["text_b"], cache_obj=cache)
        lookup_s += time.perf_counter() - t0
        decisions.append(got == answer)
        ids = dm.s.get_ids(deleted=False)  # the one live entry: remove it everywhere
        dm.v.delete(ids)
        dm.s.mark_deleted(ids)
        dm.s.clear_deleted_data()
    total_s = time.perf_counter() - t_all
    notes = (
        "init_similar_cache defaults (sqlite + faiss IDMap,Flat METRIC_L2, top_k=1, "
        "SearchDistanceEvaluation(max_distance=4.0, positive=False), Config() threshold 0.8, "
        "temperature_softmax at temperature 0) with keel's vectors as embedding function. "
        "Hit rule: squared L2 <= 0.8 <=> cosine >= 0.6 for unit vectors. Cache.init's bare "
        "default ExactMatchEvaluation would hit only on identical strings. One entry per pair, "
        "removed from faiss and sqlite after the lookup. Speed set-up: faiss limited to 1 "
        f"OpenMP thread, sqlite file in {Path(data_dir).parent}; "
        f"{total_s / max(1, len(pairs)) * 1e3:.2f} ms per pair for put+get+remove; a lookup "
        "still commits to SQLite (get_data_by_id updates access stats, hits write a report "
        "row). " + agreement(decisions, cosines, 0.6)
    )
    return peer_result(
        "gptcache",
        "Config().similarity_threshold=0.8 on SearchDistanceEvaluation(max_distance=4.0): "
        "faiss squared L2 <= 0.8 (cosine >= 0.6)",
        decisions,
        lookup_s,
        notes,
    )


def run_redisvl(
    pairs: list[dict[str, Any]], emb: VectorMap, cosines: Vec, redis_url: str
) -> dict[str, Any]:
    from redisvl.extensions.cache.llm import SemanticCache
    from redisvl.utils.vectorize import CustomVectorizer

    vectorizer = CustomVectorizer(embed=emb.as_list)
    cache = SemanticCache(
        name=f"keel_bench_{uuid.uuid4().hex[:8]}", vectorizer=vectorizer, redis_url=redis_url
    )
    decisions: list[bool] = []
    lookup_s = 0.0
    try:
        t_all = time.perf_counter()
        for i, pair in enumerate(pairs):
            answer = f"answer-{i}"
            key = cache.store(prompt=pair["text_a"], response=answer)
            t0 = time.perf_counter()
            hits = cache.check(prompt=pair["text_b"])
            lookup_s += time.perf_counter() - t0
            decisions.append(bool(hits) and hits[0].get("response") == answer)
            cache.drop(keys=[key])
        total_s = time.perf_counter() - t_all
        threshold = cache.distance_threshold
    finally:
        cache.delete()
    notes = (
        f"SemanticCache defaults (distance_threshold={threshold} Redis COSINE distance, FLAT "
        "float32 index, check() = VECTOR_RANGE query, num_results=1) with a CustomVectorizer "
        "returning keel's vectors. Hit rule: 1 - cos <= 0.1 <=> cosine >= 0.9. One entry per "
        f"pair, dropped after the lookup; {total_s / max(1, len(pairs)) * 1e3:.2f} ms per pair "
        "for store+check+drop over TCP loopback (lookup time includes the Redis round trip). "
        + agreement(decisions, cosines, 1.0 - threshold)
    )
    return peer_result(
        "redisvl",
        f"SemanticCache distance_threshold={threshold} (cosine distance; cosine >= "
        f"{1.0 - threshold:g})",
        decisions,
        lookup_s,
        notes,
    )


def skipped(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "version": importlib.metadata.version(name), "threshold_used": None,
            "decisions": None, "us_per_lookup": None, "notes": f"skipped: {why}"}  # fmt: skip


def main() -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    with open(sys.argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    pairs: list[dict[str, Any]] = job["pairs"]
    emb_a = np.asarray(job["emb_a"], dtype=np.float32)
    emb_b = np.asarray(job["emb_b"], dtype=np.float32)
    if emb_a.shape != (len(pairs), DIM) or emb_b.shape != emb_a.shape:
        raise SystemExit(f"emb_a/emb_b must be ({len(pairs)}, {DIM}); got {emb_a.shape}")
    emb = VectorMap([p["text_a"] for p in pairs] + [p["text_b"] for p in pairs],
                    np.concatenate([emb_a, emb_b]))  # fmt: skip
    cosines = np.einsum("ij,ij->i", emb_a, emb_b)
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("gptcache", lambda: run_gptcache(pairs, emb, cosines))
    ]
    if job.get("redis_url"):
        runs.append(("redisvl", lambda: run_redisvl(pairs, emb, cosines, job["redis_url"])))
    peers = [run() for _, run in runs]
    if not job.get("redis_url"):
        peers.append(skipped("redisvl", "no redis_url (Redis/Valkey with RediSearch) given"))
    for peer in peers:
        if emb.unknown:
            peer["notes"] += f" WARNING: {emb.unknown} texts had no precomputed vector."
    json.dump({"peers": peers}, sys.stdout)


if __name__ == "__main__":
    main()
