"""The real local model (Gemma 3 270M via llama.cpp) through the gateway, end to end."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from keel.app import build_services, create_app
from keel.config import Settings, load_settings
from keel.gateway.services import Services
from keel.metering.request_log import LogFilter, query_requests

from live import serve_app

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Services]]:
    tmp = tmp_path_factory.mktemp("local")
    models_dir = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))
    settings: Settings = load_settings(None, data_dir=str(tmp / "data"), models_dir=models_dir)
    settings.request_log.flush_interval_s = 0.02
    svc = build_services(settings)
    key = svc.keys.create("acme", agent="tour").secret
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, key, svc


def test_openai_client_streams_from_the_local_model(
    local_stack: tuple[str, str, Services],
) -> None:
    base, key, _ = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    pieces = []
    chunks = list(client.chat.completions.create(
        model="gemma-3-270m", stream=True, max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": "Name three colours."}],
        stream_options={"include_usage": True},
    ))
    for chunk in chunks:
        pieces.extend(c.delta.content or "" for c in chunk.choices)
    text = "".join(pieces)
    assert text.strip(), "the model produced no text"
    assert len([p for p in pieces if p]) > 1, "tokens should arrive as separate chunks"
    # OpenAI's contract: usage only in one final chunk, with no choices
    *body, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in body)


def test_stream_carries_no_usage_unless_asked(local_stack: tuple[str, str, Services]) -> None:
    base, key, _ = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    for stream_options in (None, {"include_usage": False}):
        kw = {"stream_options": stream_options} if stream_options else {}
        chunks = list(client.chat.completions.create(
            model="gemma-3-270m", stream=True, max_tokens=4, temperature=0,
            messages=[{"role": "user", "content": "Name a fruit."}], **kw))
        assert chunks and all(c.usage is None and c.choices for c in chunks)
    done = list(client.completions.create(model="gemma-3-270m", prompt="One, two,",
                                          max_tokens=3, stream=True))
    assert all(c.usage is None for c in done)


def test_stream_never_leaks_the_transcript_template(
    local_stack: tuple[str, str, Services],
) -> None:
    """The base model continues a Q/A transcript with new "Answer:" lines (reproduced with
    this prompt at temperature 0): the answer must end before them, streamed or not."""
    base, key, _ = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    msgs = [{"role": "user", "content": "Q: what is 1+1? A: 2. Q: what is 2+3?"}]
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gemma-3-270m", stream=True, max_tokens=60, temperature=0, seed=1,
        messages=msgs) if c.choices)
    assert text.strip()
    assert "Answer:" not in text and "Question:" not in text
    whole = client.chat.completions.create(model="gemma-3-270m", max_tokens=60,
                                           temperature=0, seed=1, messages=msgs)
    assert "Answer:" not in (whole.choices[0].message.content or "")


@pytest.mark.parametrize("extra", [
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"tool_choice": "required"},
    {"logprobs": True},
    {"top_logprobs": 2},
])
def test_local_provider_refuses_what_it_cannot_do(
    local_stack: tuple[str, str, Services], extra: dict,
) -> None:
    base, key, _ = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gemma-3-270m", max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}], **extra)
    assert err.value.body["param"] == next(iter(extra))  # type: ignore[index]


def test_embedding_dimensions_are_honoured_or_refused(
    local_stack: tuple[str, str, Services],
) -> None:
    base, key, _ = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    out = client.embeddings.create(model="all-minilm-l6-v2", input="hi", dimensions=384)
    assert len(out.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="all-minilm-l6-v2", input="hi", dimensions=64)
    assert "384" in str(err.value)


def test_401_names_the_bearer_scheme(local_stack: tuple[str, str, Services]) -> None:
    import httpx

    base, _, _ = local_stack
    r = httpx.get(base + "/v1/models")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_local_completion_is_metered_and_logged(local_stack: tuple[str, str, Services]) -> None:
    base, key, svc = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gemma-3-270m", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "Say hello."}],
    )
    out = raw.parse()
    rid = raw.headers["x-keel-request-id"]
    assert out.usage is not None and out.usage.completion_tokens > 0
    spec = svc.models.get("gemma-3-270m")
    expected = spec.cost_usd(out.usage.prompt_tokens, out.usage.completion_tokens)
    assert expected > 0
    assert float(raw.headers["x-keel-cost-usd"]) == pytest.approx(expected, rel=1e-6)

    import asyncio

    async def row() -> dict:
        await svc.request_log.flush()
        rows = await svc.db.run(lambda c: query_requests(c, LogFilter(limit=50)))
        return next(r for r in rows if r["id"] == rid)

    r = asyncio.run(row())
    assert r["provider"] == "local" and r["tenant"] == "acme" and r["agent"] == "tour"
    assert r["completion_tokens"] == out.usage.completion_tokens
    assert r["cost_usd"] == pytest.approx(expected)
    assert r["response_text"] == out.choices[0].message.content


def test_local_json_schema_output(local_stack: tuple[str, str, Services]) -> None:
    base, key, _ = local_stack
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 12}},
              "required": ["colour"], "additionalProperties": False}
    out = client.chat.completions.create(
        model="gemma-3-270m", max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "Pick a colour. Answer in JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "pick", "schema": schema}},
    )
    data = json.loads(out.choices[0].message.content or "")
    assert isinstance(data["colour"], str)
