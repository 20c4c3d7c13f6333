"""One embedding per text per request, shared by every stage that needs it.

The firewall's semantic layer, the semantic cache and RAG each want the prompt's
embedding; on a single-turn chat they judge the same text (the user's turn). A
:class:`EmbeddingMemo` lives on the :class:`~keel.gateway.context.RequestContext`; a stage
asks it instead of the embedder, so the first stage that needs a text pays for it and the
others reuse the vector. Nothing is computed until a stage asks: a request that a
signature blocks or an exact cache hit answers never embeds (the firewall's verdict memo
answers a repeated prompt without one).

Texts are keyed, and embedded, with whitespace runs collapsed to one space and the ends
trimmed: a word-piece tokenizer splits on whitespace, so the vector is the same as for the
raw text (MiniLM drops control characters such as form feeds where this inserts a space;
no other difference), and "hello\\n world" from the firewall meets "hello world" from the
cache. Vectors are keyed per embedder (by object), so a cache configured with another
embedder model never gets MiniLM's vector.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt

from keel.ports.embedder import Embedder

Float32Array = npt.NDArray[np.float32]
_SPACE = re.compile(r"\s+")


def memo_key(text: str) -> str:
    """The text as the memo embeds it: whitespace runs collapsed, ends trimmed."""
    return _SPACE.sub(" ", text).strip()


class EmbeddingMemo:
    """Per-request vectors by (embedder, normalised text); see the module docstring."""

    __slots__ = ("_vectors", "computed")

    def __init__(self) -> None:
        self._vectors: dict[tuple[int, str], Float32Array] = {}
        self.computed = 0  # texts actually sent to an embedder (tests, benchmarks)

    async def embed(self, embedder: Embedder, texts: list[str]) -> Float32Array:
        """Unit vectors for ``texts`` (one row each, input order); only texts this request
        has not embedded yet go to ``embedder``, in one call."""
        owner = id(embedder)
        keys = [memo_key(t) for t in texts]
        missing = [k for k in dict.fromkeys(keys) if (owner, k) not in self._vectors]
        if missing:
            rows = np.asarray(await embedder.embed(missing), dtype=np.float32)
            self.computed += len(missing)
            for k, row in zip(missing, rows, strict=True):
                self._vectors[(owner, k)] = row
        if not keys:
            return np.zeros((0, embedder.dim), dtype=np.float32)
        return np.stack([self._vectors[(owner, k)] for k in keys])
