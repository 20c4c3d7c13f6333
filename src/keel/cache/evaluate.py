"""``keel cache eval``: precision / recall / false-hit rate of the cache decision on pairs.

A pair is (cached question, new question, same?). The cache would serve the cached answer
when the cosine similarity reaches the threshold AND the verifier accepts the pair; that is
a true hit for duplicates and a false hit otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from keel.cache.verifier import Verifier
from keel.errors import InvalidRequest
from keel.ports.embedder import Embedder

SWEEP = (0.70, 0.75, 0.78, 0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)
Vectors = Mapping[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool


def load_pairs(path: Path) -> list[Pair]:
    """JSONL rows with ``text_a``/``text_b``/``label`` or ``a``/``b``/``same``."""
    if not path.is_file():
        raise InvalidRequest(f"{path}: no such file")
    pairs: list[Pair] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InvalidRequest(f"{path}:{n}: not valid JSON") from None
        if not isinstance(row, dict):
            raise InvalidRequest(f"{path}:{n}: each line must be a JSON object")
        a, b = row.get("text_a", row.get("a")), row.get("text_b", row.get("b"))
        label = row.get("label", row.get("same"))
        if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
            raise InvalidRequest(f"{path}:{n}: needs non-empty string fields text_a and text_b "
                                 "(or a and b)")
        if label not in (0, 1, True, False):
            raise InvalidRequest(f"{path}:{n}: 'label' (or 'same') must be 0/1 or true/false")
        pairs.append(Pair(a, b, bool(label)))
    if not pairs:
        raise InvalidRequest(f"{path}: no pairs found")
    return pairs


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of the proportion k / n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def metrics(hit: npt.NDArray[np.bool_], same: npt.NDArray[np.bool_]) -> dict[str, Any]:
    tp = int((hit & same).sum())
    fp = int((hit & ~same).sum())
    pos, neg = int(same.sum()), int((~same).sum())
    return {"pairs": len(same), "true_hits": tp, "false_hits": fp,
            "precision": round(tp / (tp + fp), 4) if tp + fp else 1.0,
            "recall": round(tp / pos, 4) if pos else 0.0,
            "false_hit_rate": round(fp / neg, 4) if neg else 0.0,
            "recall_ci95": wilson(tp, pos), "false_hit_rate_ci95": wilson(fp, neg)}


async def similarities(embedder: Embedder, pairs: Sequence[Pair]) -> npt.NDArray[np.float32]:
    a, b = await pair_vectors(embedder, pairs)
    return np.asarray((a * b).sum(axis=1), dtype=np.float32)


async def phrase_vectors(embedder: Embedder, pairs: Iterable[Pair],
                         verifier: Verifier | None,
                         known: Vectors | None = None) -> dict[str, npt.NDArray[np.float32]]:
    """The embeddings the verifier needs for these pairs (one batched call for those not
    in ``known``, e.g. the questions' own embeddings)."""
    if verifier is None:
        return {}
    known = known or {}
    needed = {t for p in pairs for t in verifier.needs(p.b, p.a)}
    out = {t: known[t] for t in needed if t in known}
    texts = sorted(needed - out.keys())
    if texts:
        out.update(zip(texts, np.asarray(await embedder.embed(texts), np.float32),
                       strict=True))
    return out


async def pair_vectors(embedder: Embedder, pairs: Sequence[Pair]
                       ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Embeddings of each pair's two questions."""
    a = np.asarray(await embedder.embed([p.a for p in pairs]), np.float32)
    b = np.asarray(await embedder.embed([p.b for p in pairs]), np.float32)
    return a, b


def verified(pairs: Iterable[Pair], verifier: Verifier | None,
             vectors: Vectors | None = None) -> npt.NDArray[np.bool_]:
    """Whether the verifier accepts serving ``a``'s answer for the query ``b``."""
    return np.array([verifier is None or verifier.check(p.b, p.a, vectors) is None
                     for p in pairs], dtype=bool)


def evaluate(pairs: Sequence[Pair], sims: npt.NDArray[np.float32], threshold: float,
             verifier: Verifier | None, vectors: Vectors | None = None) -> dict[str, Any]:
    same = np.array([p.same for p in pairs], dtype=bool)
    ok = verified(pairs, verifier, vectors)
    out = metrics((sims >= threshold) & ok, same)
    out["threshold"] = threshold
    out["verifier"] = verifier is not None
    out["cosine_only"] = metrics(sims >= threshold, same)
    out["sweep"] = [{"threshold": t, **metrics((sims >= t) & ok, same),
                     "cosine_only_precision": metrics(sims >= t, same)["precision"]}
                    for t in SWEEP]
    return out
