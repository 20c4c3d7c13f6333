"""Text embeddings."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt


class Embedder(Protocol):
    name: str
    dim: int

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings, one row per text."""
        ...

    def count_tokens(self, text: str) -> int: ...
