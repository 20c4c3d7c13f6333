"""Semantic-cache decision quality on QQP pairs: keel vs GPTCache vs redisvl, same embeddings.

keel: cosine >= the configured threshold AND the hit verifier (plus the sweep, and cosine
alone). Peers, at their default thresholds and similarity evaluation, through
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
from keel.cache.verifier import HitVerifier
from keel.providers.embeddings import MiniLMEmbedder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT.parent / "shared" / "datasets" / "semantic_cache" / "qqp_pairs.jsonl"
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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--skip-peers", action="store_true")
    args = ap.parse_args()
    pairs = ev.load_pairs(DATA)
    embedder = MiniLMEmbedder(ROOT / ".keel" / "models")
    a = await embedder.embed([p.a for p in pairs])
    b = await embedder.embed([p.b for p in pairs])
    sims = (a * b).sum(axis=1)
    keel = ev.evaluate(pairs, sims, args.threshold, HitVerifier())
    rows: dict[str, Any] = {f"keel (cos>={args.threshold:.2f} + verifier)": keel,
                            f"keel cosine only (cos>={args.threshold:.2f})": keel["cosine_only"]}
    peers: list[dict[str, Any]] = []
    if not args.skip_peers:
        ensure_peers()
        from services import RedisServer, redis_stack_dir, valkey_binary

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
        import numpy as np

        same = np.array([p.same for p in pairs])
        for peer in json.loads(out.stdout)["peers"]:
            if not peer.get("decisions"):
                continue
            m = ev.metrics(np.array(peer["decisions"], dtype=bool), same)
            m.update({"threshold_used": peer["threshold_used"], "version": peer["version"],
                      "us_per_lookup": peer["us_per_lookup"], "notes": peer["notes"]})
            rows[f"{peer['name']} {peer['version']} (default)"] = m
            peers.append(m)
    t = Table(title=f"QQP pairs ({len(pairs):,}): serve text_a's answer for text_b?")
    for c in ("system", "precision", "recall", "false-hit rate", "true hits", "false hits"):
        t.add_column(c, justify="right")
    for name, m in rows.items():
        t.add_row(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}",
                  f"{m['false_hit_rate']:.2%}", str(m["true_hits"]), str(m["false_hits"]))
    console.print(t)
    OUT.write_text(json.dumps({"dataset": str(DATA.name), "rows": rows,
                               "keel_sweep": keel["sweep"]}, indent=1))
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
