"""Known secrets are masked in every encoding an echoing upstream is likely to use, in
error text and in answers (whole or streamed in pieces of any size)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from keel.redaction import AnswerStreamRedactor, Redactor, configured_secrets, redact_answer

SECRET = "upstreamSecretXyz987654321"


@pytest.mark.parametrize("form", [
    SECRET, SECRET.upper(), SECRET.lower(), SECRET.encode().hex(),
    SECRET.encode().hex().upper(), SECRET[::-1], " ".join(SECRET), "-".join(SECRET),
    base64.b64encode(SECRET.encode()).decode(),
])
def test_error_text_hides_every_form_of_a_known_secret(form: str) -> None:
    out = Redactor([SECRET])(f"upstream said: your key is {form} (bad)")
    assert SECRET.lower() not in out.lower() and form not in out
    assert out.startswith("upstream said:") and "[redacted]" in out


def test_answers_mask_only_known_secrets() -> None:
    r = Redactor([SECRET])
    text = f"use Bearer {SECRET.upper()} or sk-abcdefghijklmnop"
    answer = {"choices": [{"message": {"content": text}, "index": 0}],
              "usage": {"prompt_tokens": 3}}
    out = redact_answer(answer, r)
    assert out["choices"][0]["message"]["content"] == "use Bearer [redacted] or sk-abcdefghijklmnop"
    assert out["usage"] == {"prompt_tokens": 3}
    untouched = {"choices": [{"message": {"content": "x"}}]}
    assert redact_answer(untouched, Redactor([])) is untouched
    assert not Redactor([None, "", "short"]).active


def _chunks(text: str, step: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"id": "c", "choices": [{"index": 0, "delta": {"content": text[i:i + step]},
                                 "finish_reason": None}]}
        for i in range(0, len(text), step)]
    out.append({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return out


async def _collect(chunks: list[dict[str, Any]], r: Redactor) -> list[dict[str, Any]]:
    async def gen() -> AsyncGenerator[dict[str, Any], None]:
        for c in chunks:
            yield c
    return [c async for c in AnswerStreamRedactor(r).wrap(gen())]


@pytest.mark.parametrize("step", [1, 2, 5, 13, 200])
def test_a_secret_split_across_stream_chunks_is_masked(step: int) -> None:
    text = f"key: {SECRET} and hex {SECRET.encode().hex()} end"
    out = asyncio.run(_collect(_chunks(text, step), Redactor([SECRET])))
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in out)
    assert joined == "key: [redacted] and hex [redacted] end"
    assert out[-1]["choices"][0]["finish_reason"] == "stop"  # the tail came before it


def test_text_that_cannot_start_a_secret_streams_without_delay() -> None:
    # a fixed hold-back window (the longest form, here the 52-character hex) would keep
    # every answer's last characters back until the next chunk
    words = ["Hello", " there,", " how", " can", " I", " help", " you", " today?"]
    chunks = _chunks("", 1)[:0] + [
        {"id": "c", "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
        for w in words]
    out = asyncio.run(_collect(chunks, Redactor([SECRET])))
    sent = [c["choices"][0]["delta"].get("content", "") for c in out]
    # each piece goes out as it came, except a tail that may begin the key ("u", "up"...)
    assert sent[:3] == ["Hello", " there,", " how"] and "".join(sent) == "".join(words)


def test_text_held_back_is_sent_when_the_stream_ends_without_a_finish() -> None:
    chunks = _chunks(f"a {SECRET[:10]}", 4)[:-1]
    out = asyncio.run(_collect(chunks, Redactor([SECRET])))
    joined = "".join(c["choices"][0]["delta"].get("content", "") for c in out)
    assert joined == f"a {SECRET[:10]}"


def test_configured_secrets_walks_settings() -> None:
    from keel.config import load_settings

    s = load_settings(None, models=[{"name": "m", "provider": "openai",
                                     "api_key": "model-key-123456"}],
                      openai={"api_key": "openai-key-654321"})
    found = configured_secrets(s)
    assert {"model-key-123456", "openai-key-654321"} <= set(found)
