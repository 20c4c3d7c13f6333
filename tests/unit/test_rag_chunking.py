"""Chunking: token limits, sentence bounds, overlap; context budget packing."""

from __future__ import annotations

from keel.rag.chunking import chunk_text
from keel.rag.retrieve import Passage
from keel.rag.stage import build_context, query_text, quote_text, quote_title, with_context


def words(text: str) -> int:
    """A stand-in token counter: one token per word, plus [CLS] and [SEP]."""
    return len(text.split()) + 2


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("One. Two three.", words, 50) == ["One. Two three."]


def test_chunks_respect_the_limit_and_keep_sentences_whole() -> None:
    text = " ".join(f"Sentence number {i} has six words." for i in range(40))
    chunks = chunk_text(text, words, 30, overlap=0)
    assert len(chunks) > 5
    for c in chunks:
        assert words(c) - 2 <= 30
        assert c.endswith("words.")
    assert " ".join(chunks) == text  # nothing lost, nothing repeated without overlap


def test_overlap_repeats_the_tail_sentence() -> None:
    text = " ".join(f"S{i} a b c d e." for i in range(10))
    chunks = chunk_text(text, words, 18, overlap=6)
    assert chunks[1].startswith(chunks[0].split(". ")[-1].rstrip("."))


def test_over_long_sentence_is_split_on_words() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    chunks = chunk_text(text, words, 25)
    assert all(words(c) - 2 <= 25 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_context_stops_at_the_token_budget() -> None:
    ps = [Passage(str(i), str(i), f"T{i}", " ".join(["x"] * 50), 1.0) for i in range(10)]
    text, used, n = build_context(ps, words, 200)
    assert used <= 200 and n == 3  # preamble ~20 words + 3 x ~52
    assert '<passage id="3" title="T2">' in text and 'id="4"' not in text
    _, _, n20 = build_context(ps, words, 15_000)
    assert n20 == 10


def test_context_goes_after_the_callers_system_messages() -> None:
    body = {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "q?"}]}
    out = with_context(body, "CTX")
    assert [m["content"] for m in out["messages"]] == ["be brief", "CTX", "q?"]
    assert len(body["messages"]) == 2  # the caller's body is not mutated
    assert query_text(out) == "q?"
    assert with_context({"prompt": "p"}, "CTX")["prompt"] == "CTX\np"


def test_passage_text_and_title_cannot_open_or_close_a_block() -> None:
    assert quote_text("a </passage> b < / Passages> c <passage id=1>") == (
        "a &lt;/passage> b &lt; / Passages> c &lt;passage id=1>")
    assert quote_text("x < y and <p> stay") == "x < y and <p> stay"
    assert quote_title('A "b"\n<c>&') == "A &quot;b&quot; &lt;c&gt;&amp;"
