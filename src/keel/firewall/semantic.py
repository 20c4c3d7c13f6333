"""Semantic second layer: nearest known attack by embedding cosine similarity.

The corpus holds unit-length embeddings of known attacks (and of ~``chunk_chars`` chunks of
long ones), with an id and category per vector but no raw text. A prompt is embedded whole
when short, or as overlapping chunks when long (at most ``max_chunks``, spread over the
text, so work stays bounded); the layer blocks when the best cosine similarity to any
corpus vector reaches ``threshold``. Search is an exact matrix product: a few thousand
vectors cost well under a millisecond next to the embedding itself.

The shipped corpus (``rulesets/attack_corpus.npz``) was built by ``bench/firewall_eval.py
--build-corpus`` from the TRAINING split of ``datasets/prompt_injection`` only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from keel.errors import ConfigError
from keel.firewall.dataset import Row
from keel.firewall.verdict import Verdict
from keel.ports.embedder import Embedder

DEFAULT_THRESHOLD = 0.63  # 2-fold CV on the training split: ~0.8% benign FPR
DEFAULT_CORPUS = "attack_corpus.npz"


def chunk_text(text: str, chunk_chars: int, max_chunks: int = 8) -> list[str]:
    """``text`` itself when short, else up to ``max_chunks`` chunks of ``chunk_chars``
    overlapping by a fifth, evenly spread from the start to the end of the text."""
    if len(text) <= chunk_chars:
        return [text]
    step = max(1, chunk_chars * 4 // 5)
    starts = list(range(0, len(text) - chunk_chars + step, step))
    if len(starts) > max_chunks:
        idx = np.linspace(0, len(starts) - 1, max_chunks).round().astype(int)
        starts = [starts[i] for i in sorted(set(idx.tolist()))]
    return [text[s : s + chunk_chars] for s in starts]


@dataclass
class AttackCorpus:
    ids: list[str]
    categories: list[str]
    vectors: npt.NDArray[np.float32]  # (n, dim), unit rows

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.ids) != self.vectors.shape[0]:
            raise ConfigError("attack corpus: ids and vectors disagree in length")
        if len(self.categories) != len(self.ids):
            raise ConfigError("attack corpus: ids and categories disagree in length")

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            Path(path), vectors=self.vectors.astype(np.float16),
            ids=np.array(self.ids), categories=np.array(self.categories),
        )

    @classmethod
    def _from_npz(cls, source: Path | io.BytesIO, where: str) -> AttackCorpus:
        try:
            with np.load(source, allow_pickle=False) as data:
                vectors = np.asarray(data["vectors"], dtype=np.float32)
                ids = [str(x) for x in data["ids"]]
                cats = [str(x) for x in data["categories"]]
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"attack corpus {where}: cannot read it ({exc})") from None
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        return cls(ids, cats, vectors)

    @classmethod
    def load(cls, path: str | Path) -> AttackCorpus:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"attack corpus {p}: no such file")
        return cls._from_npz(p, str(p))

    @classmethod
    def default(cls) -> AttackCorpus:
        data = resources.files("keel.firewall").joinpath(f"rulesets/{DEFAULT_CORPUS}")
        return cls._from_npz(io.BytesIO(data.read_bytes()), "default")


async def build_corpus(
    rows: Sequence[Row], embedder: Embedder, *, chunk_chars: int = 1000, max_chunks: int = 8
) -> AttackCorpus:
    """Embed attack rows (whole, or as chunks when long) into a corpus."""
    texts: list[str] = []
    ids: list[str] = []
    cats: list[str] = []
    for row in rows:
        chunks = chunk_text(row["text"], chunk_chars, max_chunks)
        for i, chunk in enumerate(chunks):
            texts.append(chunk)
            ids.append(row["id"] if len(chunks) == 1 else f"{row['id']}#{i}")
            cats.append(row["category"])
    if texts:
        vectors = np.asarray(await embedder.embed(texts), dtype=np.float32)
    else:
        vectors = np.zeros((0, embedder.dim), np.float32)
    return AttackCorpus(ids, cats, vectors)


class SemanticLayer:
    """Blocks prompts whose embedding is within ``threshold`` cosine of a known attack."""

    def __init__(
        self,
        embedder: Embedder,
        corpus: AttackCorpus,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        chunk_chars: int = 1000,
        max_chunks: int = 8,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"semantic threshold must be in (0, 1], got {threshold}")
        if chunk_chars < 50:
            raise ConfigError(f"chunk_chars must be at least 50, got {chunk_chars}")
        if len(corpus) == 0:
            raise ConfigError("the attack corpus is empty")
        if corpus.vectors.shape[1] != embedder.dim:
            raise ConfigError(
                f"attack corpus has {corpus.vectors.shape[1]}-dim vectors but the embedder "
                f"{embedder.name!r} makes {embedder.dim}-dim ones; rebuild the corpus"
            )
        self.embedder = embedder
        self.corpus = corpus
        self.threshold = threshold
        self.chunk_chars = chunk_chars
        self.max_chunks = max_chunks
        self._matrix_t = np.ascontiguousarray(corpus.vectors.T)

    async def nearest(self, text: str) -> tuple[int, float]:
        """Index of the closest corpus vector and its cosine similarity."""
        chunks = chunk_text(text, self.chunk_chars, self.max_chunks)
        vecs = np.asarray(await self.embedder.embed(chunks), dtype=np.float32)
        sims = vecs @ self._matrix_t
        flat = int(np.argmax(sims))
        best = flat % sims.shape[1]
        return best, float(sims.flat[flat])

    async def check(self, text: str) -> Verdict | None:
        if not text.strip():
            return None
        idx, score = await self.nearest(text)
        if score < self.threshold:
            return None
        return Verdict(
            layer="semantic",
            rule=self.corpus.ids[idx],
            category=self.corpus.categories[idx],
            score=round(score, 4),
            detail=f"cosine {score:.3f} >= {self.threshold:.2f} to known attack",
        )
