"""Semantic second layer: known attacks vs known benign prompts, by embedding cosine.

The corpus holds unit-length embeddings of known attacks and of known benign prompts (and
of ~``chunk_chars`` chunks of long ones), with an id and category per attack vector but no
raw text. A prompt is embedded whole when short, or as overlapping chunks when long (at
most ``max_chunks``, spread from start to end, so work stays bounded). Each chunk scores
a kNN margin: the mean cosine of its ``top_k`` nearest attacks minus the mean cosine of
its ``top_k`` nearest benign prompts; the prompt's score is its best chunk's, and the layer
blocks when that reaches ``threshold``. Benign neighbours are what keep everyday prompts
that merely share words with attacks ("reset my password") from being blocked. Search is
an exact matrix product: a few thousand vectors cost well under a millisecond next to the
embedding itself.

The shipped corpus (``rulesets/attack_corpus.npz``) was built by ``bench/firewall_eval.py
--build-corpus`` from the TRAINING split of ``datasets/prompt_injection`` only, plus the
hand-written everyday support questions in ``rulesets/benign_anchors.json`` as benign.

MiniLM is an English model: text in another language embeds near the multilingual
in-the-wild jailbreak samples whatever it says ("Hola, ¿cómo estás?" scored 0.149). A chunk
that is not English enough (:func:`keel.firewall.language.english_share` below
``MIN_ENGLISH_SHARE``) must reach the much larger ``non_english_threshold`` instead; the
signature layer judges it as usual.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from keel.errors import ConfigError
from keel.firewall.dataset import ATTACK_LABELS, BENIGN_LABEL, Row
from keel.firewall.language import english_share
from keel.firewall.verdict import Verdict
from keel.gateway.embedding_memo import EmbeddingMemo
from keel.ports.embedder import Embedder

# kNN margin threshold: 5-fold CV on the training split, with the signature layer in front,
# put both layers at 0.6-0.8% benign blocked for margins of 0.126-0.137; 0.14 is the
# slightly stricter side of that.
DEFAULT_THRESHOLD = 0.14
# Non-English text: 33 everyday questions in 15 languages scored margins up to 0.24; the
# non-English chunks of the training split's attacks scored 0.21-0.26 or 0.35-0.63 (none in
# between). 0.35 sits in that gap, 0.11 above the highest everyday prompt.
DEFAULT_NON_ENGLISH_THRESHOLD = 0.35
MIN_ENGLISH_SHARE = 0.5  # below it a chunk counts as not English (see language.py)
DEFAULT_TOP_K = 3
DEFAULT_MAX_CHUNKS = 3  # first, middle and last chunk of a long prompt
DEFAULT_CORPUS = "attack_corpus.npz"
BENIGN_ANCHORS = "benign_anchors.json"


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
    benign: npt.NDArray[np.float32] | None = None  # (m, dim), unit rows; None: no benign

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.ids) != self.vectors.shape[0]:
            raise ConfigError("attack corpus: ids and vectors disagree in length")
        if self.benign is None:
            self.benign = np.zeros((0, self.vectors.shape[1]), np.float32)
        if self.benign.ndim != 2 or self.benign.shape[1] != self.vectors.shape[1]:
            raise ConfigError("attack corpus: benign and attack vectors differ in dimension")
        if len(self.categories) != len(self.ids):
            raise ConfigError("attack corpus: ids and categories disagree in length")

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            Path(path), vectors=self.vectors.astype(np.float16),
            ids=np.array(self.ids), categories=np.array(self.categories),
            benign=self.benign_vectors.astype(np.float16),
        )

    @property
    def benign_vectors(self) -> npt.NDArray[np.float32]:
        assert self.benign is not None  # set in __post_init__
        return self.benign

    @classmethod
    def _from_npz(cls, source: Path | io.BytesIO, where: str) -> AttackCorpus:
        try:
            with np.load(source, allow_pickle=False) as data:
                vectors = np.asarray(data["vectors"], dtype=np.float32)
                ids = [str(x) for x in data["ids"]]
                cats = [str(x) for x in data["categories"]]
                benign = (np.asarray(data["benign"], dtype=np.float32) if "benign" in data
                          else None)
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"attack corpus {where}: cannot read it ({exc})") from None
        return cls(ids, cats, _unit(vectors), None if benign is None else _unit(benign))

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


def _unit(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def benign_anchors() -> list[str]:
    """The hand-written everyday prompts shipped as extra benign examples."""
    data = resources.files("keel.firewall").joinpath(f"rulesets/{BENIGN_ANCHORS}")
    return [str(t) for t in json.loads(data.read_text(encoding="utf-8"))["texts"]]


async def build_corpus(
    rows: Sequence[Row], embedder: Embedder, *, chunk_chars: int = 1000,
    max_chunks: int = DEFAULT_MAX_CHUNKS, extra_benign: Sequence[str] = (),
) -> AttackCorpus:
    """Embed attack rows and benign rows (whole, or as chunks when long) into a corpus;
    ``extra_benign`` texts join the benign side. Rows that are neither are skipped."""
    texts: list[str] = []
    ids: list[str] = []
    cats: list[str] = []
    benign_texts = list(extra_benign)
    for row in rows:
        chunks = chunk_text(row["text"], chunk_chars, max_chunks)
        if row["label"] == BENIGN_LABEL:
            benign_texts.extend(chunks)
            continue
        if row["label"] not in ATTACK_LABELS:
            continue
        for i, chunk in enumerate(chunks):
            texts.append(chunk)
            ids.append(row["id"] if len(chunks) == 1 else f"{row['id']}#{i}")
            cats.append(row["category"])
    return AttackCorpus(ids, cats, await _embed_all(embedder, texts),
                        await _embed_all(embedder, benign_texts))


async def _embed_all(embedder: Embedder, texts: list[str]) -> npt.NDArray[np.float32]:
    if not texts:
        return np.zeros((0, embedder.dim), np.float32)
    return np.asarray(await embedder.embed(texts), dtype=np.float32)


def _top_k_mean(sims: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.float32]:
    """Per row, the mean of the ``k`` largest values (0 for an empty corpus)."""
    if sims.shape[1] == 0:
        return np.zeros(sims.shape[0], np.float32)
    k = min(k, sims.shape[1])
    return np.asarray(np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(axis=1),
                      dtype=np.float32)


class SemanticLayer:
    """Blocks prompts whose kNN margin (nearest attacks minus nearest benign prompts)
    reaches ``threshold``."""

    def __init__(
        self,
        embedder: Embedder,
        corpus: AttackCorpus,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        chunk_chars: int = 1000,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        top_k: int = DEFAULT_TOP_K,
        non_english_threshold: float = DEFAULT_NON_ENGLISH_THRESHOLD,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"semantic threshold must be in (0, 1], got {threshold}")
        non_english_threshold = max(non_english_threshold, threshold)
        if chunk_chars < 50:
            raise ConfigError(f"chunk_chars must be at least 50, got {chunk_chars}")
        if max_chunks < 1 or top_k < 1:
            raise ConfigError(f"max_chunks and top_k must be at least 1, got {max_chunks}, "
                              f"{top_k}")
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
        self.top_k = top_k
        self.non_english_threshold = non_english_threshold
        self._matrix_t = np.ascontiguousarray(corpus.vectors.T)
        self._benign_t = np.ascontiguousarray(corpus.benign_vectors.T)

    def chunks(self, text: str) -> list[str]:
        return chunk_text(text, self.chunk_chars, self.max_chunks)

    def score_vectors(
        self, vecs: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """Per chunk embedding: its kNN margin and the index of its closest attack."""
        sims = vecs @ self._matrix_t
        margin = _top_k_mean(sims, self.top_k) - _top_k_mean(vecs @ self._benign_t, self.top_k)
        return margin, np.argmax(sims, axis=1)

    def english(self, chunk: str) -> bool:
        """Can the (English) embedder judge this chunk at the normal threshold?"""
        return english_share(chunk) >= MIN_ENGLISH_SHARE

    def judged_margins(self, chunks: Sequence[str],
                       margins: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Margins to compare with ``threshold``: a chunk that is not English enough is
        lowered by the extra margin it must reach (``non_english_threshold``)."""
        extra = self.non_english_threshold - self.threshold
        lower = np.array([0.0 if self.english(c) else extra for c in chunks], np.float32)
        return np.asarray(margins - lower, dtype=np.float32)

    async def nearest(self, text: str, memo: EmbeddingMemo | None = None) -> tuple[int, float]:
        """Index of the closest known attack (for the best chunk) and the prompt's margin."""
        idx, _, score = await self.judge(text, memo)
        return idx, score

    async def judge(self, text: str, memo: EmbeddingMemo | None = None
                    ) -> tuple[int, float, float]:
        """For the chunk that comes closest to blocking: index of its closest known attack,
        its judged margin (see :meth:`judged_margins`) and its raw margin.

        With the request's ``memo`` the chunks are embedded through it, so the cache and
        RAG reuse the vector of the same text instead of embedding it again."""
        memo = memo if memo is not None else EmbeddingMemo()
        chunks = self.chunks(text)
        vecs = await memo.embed(self.embedder, chunks)
        margin, closest = self.score_vectors(vecs)
        judged = self.judged_margins(chunks, margin)
        best = int(np.argmax(judged))
        return int(closest[best]), float(judged[best]), float(margin[best])

    async def check(self, text: str, memo: EmbeddingMemo | None = None) -> Verdict | None:
        if not text.strip():
            return None
        idx, judged, score = await self.judge(text, memo)
        if judged < self.threshold:
            return None
        needed = self.threshold if judged == score else self.non_english_threshold
        sample = self.corpus.ids[idx]
        category = self.corpus.categories[idx]
        return Verdict(
            layer="semantic",
            rule=f"semantic:{category}",
            category=category,
            score=round(score, 4),
            detail=f"kNN margin {score:.3f} >= {needed:.2f}"
                   f"{'' if judged == score else ' (not English)'}: closer to known attacks "
                   f"than to benign prompts (closest known attack {sample})",
            sample=sample,
        )
