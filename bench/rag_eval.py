"""RAG retrieval quality and prompt cost, DEEP vs SHALLOW, on the MTRAG passage corpus.

Corpus: ``../shared/datasets/rag_mtrag/corpus.jsonl`` (1,488 passages) and the 179
standalone questions with gold passage ids. The corpus goes through ``keel rag ingest``'s
code path (chunking, MiniLM embeddings, usearch index) into ``.keel/bench-rag`` (reused on
reruns: delete that folder to rebuild). Each question then goes through the real
retrieval stage at two depths:

* DEEP: top_k 20 chunks, 15,000-token context budget, served by the big model;
* SHALLOW: top_k 3 chunks, 1,500-token budget, served by the small model.

Reported: recall@3 and recall@20 (share of gold passages among the passages of the
chunks that reach the prompt), prompt tokens and USD per request with the configured
prices. Peers in the same run: exact numpy search over the same vectors (the index searches a
partition of <= 4,096 chunks exactly and larger ones with HNSW; the overlap says which),
and pure-Python BM25 over whole passages (the dataset's sanity baseline).

Usage (repo root)::  .venv/bin/python bench/rag_eval.py
Writes ``bench/results/rag_eval.json``.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import re
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # noqa: F401  (load native runtimes on the main thread)
import usearch.index  # noqa: F401
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from keel.app import open_database
from keel.config import ModelSpec, load_settings
from keel.gateway.context import Depth, Principal, RequestContext
from keel.providers.embeddings import MiniLMEmbedder
from keel.rag import catalog
from keel.rag.ingest import ingest, read_documents
from keel.rag.retrieve import Retriever
from keel.rag.stage import RagStage

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "rag_mtrag"
INDEX = "mtrag"
# the configured prices (USD per 1M tokens) of the two models of the ladder
BIG = ModelSpec(name="big", input_usd_per_1m=2.50, output_usd_per_1m=10.0)
SMALL = ModelSpec(name="small", input_usd_per_1m=0.15, output_usd_per_1m=0.60)
ANSWER_TOKENS = {"DEEP": 300, "SHALLOW": 150}  # max_tokens caps of the two levels
DEPTHS = {"DEEP": Depth("DEEP", 20, 15_000), "SHALLOW": Depth("SHALLOW", 3, 1_500)}
_WORD = re.compile(r"[a-z0-9]+")


def bm25_rank(docs: list[tuple[str, str]], queries: list[str], k: int) -> list[list[str]]:
    toks = [_WORD.findall(t.lower()) for _, t in docs]
    df: Counter[str] = Counter()
    for t in toks:
        df.update(set(t))
    n = len(docs)
    avg = sum(len(t) for t in toks) / n
    tfs = [Counter(t) for t in toks]
    idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
    out = []
    for q in queries:
        qw = [w for w in _WORD.findall(q.lower()) if w in idf]
        scores = []
        for i, tf in enumerate(tfs):
            s = 0.0
            for w in qw:
                f = tf.get(w, 0)
                if f:
                    s += idf[w] * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len(toks[i]) / avg))
            scores.append(s)
        best = np.argsort(-np.array(scores))[:k]
        out.append([docs[i][0] for i in best])
    return out


def recall(retrieved: list[str], gold: list[str], k: int) -> float:
    return len(set(retrieved[:k]) & set(gold)) / len(gold)


def distinct(docs: list[str]) -> list[str]:
    return list(dict.fromkeys(docs))


async def main() -> None:
    console = Console()
    data_dir = ROOT / ".keel" / "bench-rag"
    settings = load_settings(None, data_dir=str(data_dir),
                             models_dir=str(ROOT / ".keel" / "models"))
    data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    embedder = MiniLMEmbedder(settings.model_dir)
    retriever = Retriever(db, settings.rag, data_dir, embedder)
    info = await db.run(lambda c: catalog.get_index(c, "default", INDEX))
    ingest_s = None
    if info is None:
        docs = read_documents(DATA / "corpus.jsonl")
        vectors = retriever.open_vectors(catalog.vector_name("default", INDEX))
        t0 = time.perf_counter()
        with Progress(console=console) as bar:
            task = bar.add_task("ingest (chunk + embed)", total=None)
            info = await ingest(db, vectors, embedder, "default", INDEX, docs, settings.rag,
                                progress=lambda d, t: bar.update(task, completed=d, total=t))
        ingest_s = time.perf_counter() - t0
        await vectors.aclose()
    console.print(f"index {INDEX} v{info.version}: {info.documents} passages, "
                  f"{info.chunks} chunks")

    questions = [json.loads(line) for line in (DATA / "questions.jsonl").open()]
    stage = RagStage(retriever, settings.rag)
    hnsw_docs: list[list[str]] = []
    hnsw_ids: list[list[str]] = []
    per_level: dict[str, dict[str, list[float]]] = {
        lv: {"tokens": [], "passages": [], "recall": []} for lv in DEPTHS}
    search_ms: list[float] = []
    qvecs = await embedder.embed([q["question"] for q in questions])
    for q, vec in zip(questions, qvecs, strict=True):
        t0 = time.perf_counter()
        hits = await retriever.search_vector(info, vec, 20)
        search_ms.append((time.perf_counter() - t0) * 1000)
        hnsw_docs.append([h.doc for h in hits])
        hnsw_ids.append([h.id for h in hits])
        for name, depth in DEPTHS.items():
            ctx = RequestContext(id="b", route="chat", model=BIG,
                                 body={"model": "big", "messages": [
                                     {"role": "user", "content": q["question"]}]},
                                 principal=Principal("-", "bench"), client_ip="-",
                                 headers={"x-keel-rag": INDEX})
            ctx.depth = depth
            seen: list[dict[str, Any]] = []

            async def capture(c: RequestContext, seen: list[dict[str, Any]] = seen) -> None:
                seen.append(c.body)

            await stage(ctx, capture)
            prompt = "\n".join(m["content"] for m in seen[0]["messages"])
            n = int(ctx.decisions[-1].detail.split(": ")[1].split(" of")[0])
            per_level[name]["tokens"].append(embedder.count_tokens(prompt))
            per_level[name]["passages"].append(n)
            per_level[name]["recall"].append(
                recall(distinct([h.doc for h in hits[:n]]), q["gold_passage_ids"], n))

    # exact numpy search over the very same vectors (the HNSW graph's ground truth)
    con = sqlite3.connect(data_dir / "vectors" / f"{catalog.vector_name(INDEX)}.vectors.db")
    rows = con.execute("SELECT metadata, vector FROM items").fetchall()
    con.close()
    meta = [json.loads(m) for m, _ in rows]
    matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), -1)
    live = np.array([m["gen"] == str(info.generation) for m in meta])
    matrix, meta = matrix[live], [m for m, ok in zip(meta, live, strict=True) if ok]
    exact_docs, exact_ids = [], []
    for vec in qvecs:
        top = np.argsort(-(matrix @ vec))[:20]
        exact_docs.append([meta[i]["doc"] for i in top])
        exact_ids.append([f"{meta[i]['gen']}:{meta[i]['doc']}#{meta[i]['chunk']}" for i in top])
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    bm25 = bm25_rank([(d["id"], f"{d['title']} {d['text']}") for d in corpus],
                     [q["question"] for q in questions], 20)

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else 0.0

    golds = [q["gold_passage_ids"] for q in questions]
    res: dict[str, Any] = {
        "questions": len(questions), "passages": info.documents, "chunks": info.chunks,
        "chunk_tokens": settings.rag.chunk_tokens, "ingest_s": ingest_s,
        "search_ms_p50": float(np.percentile(search_ms, 50)),
        "index_vs_exact_chunk_overlap_at_20": mean([len(set(a) & set(b)) / 20 for a, b in
                                                    zip(hnsw_ids, exact_ids, strict=True)]),
        "recall": {
            "keel_index": {"@3": mean([recall(distinct(d[:3]), g, 3) for d, g in
                                      zip(hnsw_docs, golds, strict=True)]),
                          "@20": mean([recall(distinct(d[:20]), g, 20) for d, g in
                                       zip(hnsw_docs, golds, strict=True)])},
            "exact_numpy": {"@3": mean([recall(distinct(d[:3]), g, 3) for d, g in
                                        zip(exact_docs, golds, strict=True)]),
                            "@20": mean([recall(distinct(d[:20]), g, 20) for d, g in
                                         zip(exact_docs, golds, strict=True)])},
            "bm25_passages": {"@3": mean([recall(d, g, 3) for d, g in
                                          zip(bm25, golds, strict=True)]),
                              "@20": mean([recall(d, g, 20) for d, g in
                                           zip(bm25, golds, strict=True)])},
        },
        "levels": {},
        "prices_usd_per_1m": {"DEEP": [BIG.input_usd_per_1m, BIG.output_usd_per_1m],
                              "SHALLOW": [SMALL.input_usd_per_1m, SMALL.output_usd_per_1m]},
        "machine": f"{platform.machine()}, {platform.python_version()}, shared busy 2-core box",
    }
    for name, spec in (("DEEP", BIG), ("SHALLOW", SMALL)):
        lv = per_level[name]
        tokens = mean(lv["tokens"])
        res["levels"][name] = {
            "prompt_tokens_mean": tokens, "passages_in_prompt_mean": mean(lv["passages"]),
            "recall_of_prompt": mean(lv["recall"]),
            "usd_per_request": spec.cost_usd(int(tokens), ANSWER_TOKENS[name]),
        }
    deep, shallow = res["levels"]["DEEP"], res["levels"]["SHALLOW"]
    res["shallow_cost_reduction"] = 1 - shallow["usd_per_request"] / deep["usd_per_request"]
    res["shallow_token_reduction"] = 1 - shallow["prompt_tokens_mean"] / deep["prompt_tokens_mean"]

    t = Table(title=f"RAG on MTRAG ({len(questions)} questions, {info.chunks} chunks)")
    for col in ("retriever", "recall@3", "recall@20"):
        t.add_column(col)
    for name, r in res["recall"].items():
        t.add_row(name, f"{r['@3']:.3f}", f"{r['@20']:.3f}")
    console.print(t)
    t2 = Table(title="per request")
    for col in ("level", "passages", "prompt tokens", "recall of prompt", "USD/request"):
        t2.add_column(col)
    for name, lv in res["levels"].items():
        t2.add_row(name, f"{lv['passages_in_prompt_mean']:.1f}", f"{lv['prompt_tokens_mean']:.0f}",
                   f"{lv['recall_of_prompt']:.3f}", f"{lv['usd_per_request']:.6f}")
    console.print(t2)
    console.print(f"SHALLOW costs {res['shallow_cost_reduction']:.1%} less per request than "
                  f"DEEP ({res['shallow_token_reduction']:.1%} fewer prompt tokens); index vs "
                  f"exact top-20 chunk overlap: {res['index_vs_exact_chunk_overlap_at_20']:.3f}")
    out = ROOT / "bench" / "results" / "rag_eval.json"
    out.write_text(json.dumps(res, indent=2))
    await retriever.aclose()
    db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
