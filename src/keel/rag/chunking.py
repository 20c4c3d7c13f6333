"""Split documents into chunks of at most ``max_tokens`` word pieces, on sentence bounds.

Sentences are packed greedily; a sentence longer than a chunk is split on words. The
last sentences of a chunk (up to ``overlap`` tokens) start the next one, so an answer
that straddles a boundary is still whole in one chunk.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}")

CountTokens = Callable[[str], int]


def _pieces(text: str, count: CountTokens, max_tokens: int) -> list[tuple[str, int]]:
    """Sentences with their token counts; over-long sentences cut into word runs."""
    out: list[tuple[str, int]] = []
    for sentence in _SENTENCE.split(text):
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        n = max(1, count(sentence) - 2)  # minus [CLS] and [SEP]
        if n <= max_tokens:
            out.append((sentence, n))
            continue
        words: list[str] = []
        used = 0
        for word in sentence.split(" "):
            w = max(1, count(word) - 2)
            if words and used + w > max_tokens:
                out.append((" ".join(words), used))
                words, used = [], 0
            words.append(word)
            used += w
        if words:
            out.append((" ".join(words), used))
    return out


def chunk_text(text: str, count: CountTokens, max_tokens: int, overlap: int = 0) -> list[str]:
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    overlap = max(0, min(overlap, max_tokens // 2))
    chunks: list[str] = []
    current: list[tuple[str, int]] = []
    used = 0
    for piece, n in _pieces(text, count, max_tokens):
        if current and used + n > max_tokens:
            chunks.append(" ".join(p for p, _ in current))
            carry: list[tuple[str, int]] = []
            kept = 0
            for p, m in reversed(current):
                if kept + m > overlap or kept + m + n > max_tokens:
                    break
                carry.insert(0, (p, m))
                kept += m
            current, used = carry, kept
        current.append((piece, n))
        used += n
    if current:
        chunks.append(" ".join(p for p, _ in current))
    return chunks
