"""``keel cache eval`` arithmetic: rates with Wilson 95% intervals; known embeddings reused."""

from __future__ import annotations

import numpy as np

from keel.cache import evaluate as ev
from keel.cache.contradiction import ContradictionVerifier


def test_wilson_interval_matches_the_closed_form() -> None:
    # 0 of 109: the upper bound is z^2 / (n + z^2)
    assert ev.wilson(0, 109) == (0.0, round(1.96**2 / (109 + 1.96**2), 4))
    low, high = ev.wilson(88, 2477)  # balanced's QQP false hits
    assert 0.028 < low < 88 / 2477 < high < 0.044
    assert ev.wilson(5, 5)[1] == 1.0 and ev.wilson(0, 0) == (0.0, 1.0)


def test_metrics_carry_intervals() -> None:
    same = np.array([True, True, False, False])
    out = ev.metrics(np.array([True, False, True, False]), same)
    assert out["recall"] == 0.5 and out["false_hit_rate"] == 0.5
    assert out["recall_ci95"][0] < 0.5 < out["recall_ci95"][1]
    assert out["false_hit_rate_ci95"] == ev.wilson(1, 2)


class CountingEmbedder:
    """A scripted embedder that records what it is asked to embed (the arithmetic is under
    test, not the model)."""

    name = "counting"
    dim = 3

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.asked += texts
        return np.ones((len(texts), 3), np.float32) / np.sqrt(3)


async def test_phrase_vectors_reuse_known_embeddings() -> None:
    pairs = [ev.Pair("How can I remove a saved payment card?",
                     "How do I get rid of a saved card?", True)]
    verifier = ContradictionVerifier()
    needed = set(verifier.needs(pairs[0].b, pairs[0].a))
    assert needed
    known = {t: np.zeros(3, np.float32) for t in sorted(needed)[:1]}
    emb = CountingEmbedder()
    out = await ev.phrase_vectors(emb, pairs, verifier, known)  # type: ignore[arg-type]
    assert set(out) == needed
    assert set(emb.asked) == needed - set(known)
    assert out[next(iter(known))] is known[next(iter(known))]
