"""Semantic-cache decision quality: keel's profiles vs GPTCache vs redisvl, same embeddings.

Two pair sets: QQP (open-domain, noisy labels) and keel's support paraphrase set
(``bench/data/support_paraphrases.jsonl``: everyday support questions, their rewordings, and
near-miss negatives by kind). keel: each profile at its default threshold (cosine AND the
profile's verifier), cosine alone at the same threshold, and the sweep of both profiles.
Peers, at their default thresholds and similarity evaluation, through
``bench/cache_peers_runner.py`` in ``.bench-venv`` (one cached entry per pair, fed keel's
MiniLM vectors): GPTCache ``init_similar_cache`` (faiss L2, SearchDistanceEvaluation,
similarity_threshold 0.8 -> cosine >= 0.6) and redisvl SemanticCache (distance_threshold 0.1
-> cosine >= 0.9).

    .venv/bin/python bench/cache_eval.py [--skip-peers]

Writes bench/results/cache_eval.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime  # noqa: F401  (first, on the main thread)
from rich.console import Console
from rich.table import Table

from keel.cache import evaluate as ev
from keel.cache.profiles import make_verifier
from keel.cache.settings import DEFAULT_THRESHOLD
from keel.providers.embeddings import MiniLMEmbedder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
DATASETS = {
    "QQP": ROOT.parent / "shared" / "datasets" / "semantic_cache" / "qqp_pairs.jsonl",
    "support paraphrases": ROOT / "bench" / "data" / "support_paraphrases.jsonl",
}
PROFILES = ("strict", "balanced")
OUT = ROOT / "bench" / "results" / "cache_eval.json"
PEER_PY = ROOT / ".bench-venv" / "bin" / "python"
PEER_PACKAGES = ["gptcache==0.1.44", "redisvl==0.28.0", "faiss-cpu==1.15.1",
                 "sqlalchemy==2.1.9"]  # GPTCache pip-installs faiss/sqlalchemy on import else
console = Console()


def ensure_peers() -> None:
    """Install the peers into ``.bench-venv`` (created by the overhead bench's helper)."""
    probe = [str(PEER_PY), "-c", "import gptcache, redisvl, faiss"]
    if PEER_PY.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return
    from overhead_targets import ensure_litellm_venv

    ensure_litellm_venv()
    with console.status("installing GPTCache and redisvl into .bench-venv"):
        subprocess.run([str(PEER_PY), "-m", "pip", "install", "-q", *PEER_PACKAGES],
                       check=True)


async def run_peers(pairs: list[ev.Pair], a: Any, b: Any) -> list[dict[str, Any]]:
    """GPTCache and redisvl at their defaults on the same pairs and vectors."""
    import numpy as np

    from services import RedisServer, redis_stack_dir, valkey_binary

    ensure_peers()
    binary, stack = valkey_binary(), redis_stack_dir()
    server = None
    payload: dict[str, Any] = {
        "pairs": [{"id": i, "text_a": p.a, "text_b": p.b, "label": int(p.same)}
                  for i, p in enumerate(pairs)],
        "emb_a": a.tolist(), "emb_b": b.tolist()}
    if binary is not None and stack is not None:
        server = RedisServer(binary, stack / "lib" / "redisearch.so",
                             Path(tempfile.mkdtemp(prefix="keel-valkey-")))
        server.start()
        payload["redis_url"] = server.url
    src = Path(tempfile.mkdtemp()) / "pairs.json"
    src.write_text(json.dumps(payload))
    try:
        with console.status("peers (GPTCache, redisvl) in .bench-venv"):
            out = subprocess.run([str(PEER_PY), str(ROOT / "bench" / "cache_peers_runner.py"),
                                  str(src)], capture_output=True, text=True, check=True)
    finally:
        if server is not None:
            server.stop()
    same = np.array([p.same for p in pairs])
    rows = []
    for peer in json.loads(out.stdout)["peers"]:
        if not peer.get("decisions"):
            continue
        m = ev.metrics(np.array(peer["decisions"], dtype=bool), same)
        m.update({"name": f"{peer['name']} {peer['version']} (default)",
                  "threshold_used": peer["threshold_used"], "version": peer["version"],
                  "us_per_lookup": peer["us_per_lookup"], "notes": peer["notes"]})
        rows.append(m)
    return rows


async def one_dataset(embedder: MiniLMEmbedder, name: str, path: Path,
                      skip_peers: bool) -> dict[str, Any]:
    pairs = ev.load_pairs(path)
    a = await embedder.embed([p.a for p in pairs])
    b = await embedder.embed([p.b for p in pairs])
    sims = (a * b).sum(axis=1)
    rows: dict[str, Any] = {}
    sweeps: dict[str, Any] = {}
    for profile in PROFILES:
        verifier = make_verifier(profile)
        known = {p.a: a[i] for i, p in enumerate(pairs)} | {
            p.b: b[i] for i, p in enumerate(pairs)}
        vectors = await ev.phrase_vectors(embedder, pairs, verifier, known)
        th = DEFAULT_THRESHOLD[profile]
        out = ev.evaluate(pairs, sims, th, verifier, vectors)
        rows[f"keel {profile} (cos>={th:.2f} + verifier)"] = out
        sweeps[profile] = out.pop("sweep")
        rows[f"keel cosine only (cos>={th:.2f})"] = out.pop("cosine_only")
        if "kind" in path.read_text()[:300]:  # support set: false hits by kind of near-miss
            kinds = [json.loads(line).get("kind", "") for line in path.read_text().splitlines()
                     if line.strip()]
            ok = ev.verified(pairs, verifier, vectors)
            out["false_hits_by_kind"] = {
                k: int(sum(1 for p, kk, s, v in zip(pairs, kinds, sims, ok, strict=True)
                           if kk == k and not p.same and s >= th and v))
                for k in sorted(set(kinds)) if k != "paraphrase"}
    if not skip_peers:
        for m in await run_peers(pairs, a, b):
            rows[m.pop("name")] = m
    t = Table(title=f"{name} ({len(pairs):,} pairs): serve text_a's answer for text_b?")
    for c in ("system", "precision", "recall", "false-hit rate", "true hits", "false hits"):
        t.add_column(c, justify="right")
    for system, m in rows.items():
        t.add_row(system, f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                  f"{m['false_hit_rate']:.2%}", str(m["true_hits"]), str(m["false_hits"]))
    console.print(t)
    s = Table(title=f"{name}: sweep (cosine threshold + verifier)")
    for c in ("cosine >=", *(f"{p} {k}" for p in PROFILES for k in ("P", "R", "FHR"))):
        s.add_column(c, justify="right")
    for i, row in enumerate(sweeps["strict"]):
        cells = [f"{row['threshold']:.2f}"]
        for p in PROFILES:
            r = sweeps[p][i]
            cells += [f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                      f"{r['false_hit_rate']:.2%}"]
        s.add_row(*cells)
    console.print(s)
    return {"dataset": path.name, "rows": rows, "sweep": sweeps}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-peers", action="store_true")
    args = ap.parse_args()
    embedder = MiniLMEmbedder(ROOT / ".keel" / "models")
    result = {name: await one_dataset(embedder, name, path, args.skip_peers)
              for name, path in DATASETS.items()}
    OUT.write_text(json.dumps(result, indent=1))
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
