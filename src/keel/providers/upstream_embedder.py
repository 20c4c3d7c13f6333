"""The Embedder port over an OpenAI-compatible ``/v1/embeddings`` model from the model table.

Any model-table entry of kind ``embedding`` with the ``openai`` provider works: OpenAI's
``text-embedding-3-small``, Ollama, vLLM or a llama.cpp server running a GGUF embedding model
(``llama-server --embedding``). Vectors are L2-normalised here (not every server does it), so
cosine similarity is a dot product as with the built-in MiniLM. The dimension is learnt from
the first answer; later answers with another dimension are an error, never mixed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from keel.config import ModelSpec
from keel.errors import UpstreamError
from keel.providers.openai_compat import OpenAICompatProvider


class UpstreamEmbedder:
    def __init__(self, provider: OpenAICompatProvider, spec: ModelSpec) -> None:
        self.provider = provider
        self.spec = spec
        self.name = spec.name
        self.dim = 0  # learnt from the first answer

    def __repr__(self) -> str:
        return f"UpstreamEmbedder({self.name!r})"

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        data = await self.provider.embed({"input": texts}, self.spec)
        rows = data.get("data")
        if not isinstance(rows, list) or len(rows) != len(texts):
            raise UpstreamError(f"model {self.name!r}: embeddings answer has "
                                f"{len(rows) if isinstance(rows, list) else 'no'} rows for "
                                f"{len(texts)} inputs")
        rows = sorted(rows, key=lambda r: int(r.get("index", 0)) if isinstance(r, dict) else 0)
        try:
            out = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError):
            raise UpstreamError(f"model {self.name!r}: embeddings answer is not a list of "
                                "float vectors") from None
        if out.ndim != 2 or out.shape[1] == 0:
            raise UpstreamError(f"model {self.name!r}: embeddings answer has no vectors")
        if self.dim and out.shape[1] != self.dim:
            raise UpstreamError(f"model {self.name!r}: vectors changed dimension from "
                                f"{self.dim} to {out.shape[1]}")
        self.dim = int(out.shape[1])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.asarray(out / np.maximum(norms, 1e-12), dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # an estimate: the tokenizer is the upstream's

    def close(self) -> None:
        """The provider's HTTP session is closed with the model registry."""
