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
    usage = None
    for chunk in client.chat.completions.create(
        model="gemma-3-270m", stream=True, max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": "Name three colours."}],
    ):
        pieces.extend(c.delta.content or "" for c in chunk.choices)
        usage = chunk.usage or usage
    text = "".join(pieces)
    assert text.strip(), "the model produced no text"
    assert len([p for p in pieces if p]) > 1, "tokens should arrive as separate chunks"
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0


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
