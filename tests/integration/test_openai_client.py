"""The official openai client works against keel unchanged (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import openai
import pytest

from keel.app import create_app
from keel.config import Settings
from keel.gateway.services import Services

from fakes import FakeUpstream
from live import serve_app


def test_openai_client_chat_stream_models_errors(
    settings: Settings, services: Services, user_key: str, fake_upstream: FakeUpstream
) -> None:
    with serve_app(create_app(settings, services=services)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=user_key, max_retries=0)
        out = client.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "hi"}])
        assert out.choices[0].message.content == fake_upstream.reply
        assert out.usage is not None and out.usage.total_tokens == 18

        text = ""
        for chunk in client.chat.completions.create(
                model="fake-gpt", stream=True, messages=[{"role": "user", "content": "hi"}]):
            for choice in chunk.choices:
                text += choice.delta.content or ""
        assert text.strip() == fake_upstream.reply

        assert "fake-gpt" in {m.id for m in client.models.list()}
        comp = client.completions.create(model="fake-gpt", prompt="Once upon")
        assert comp.choices

        with pytest.raises(openai.NotFoundError) as nf:
            client.chat.completions.create(model="nope",
                                           messages=[{"role": "user", "content": "x"}])
        assert "does not exist" in str(nf.value)
        bad = openai.OpenAI(base_url=base + "/v1", api_key="keel_wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_streamed_usage_keeps_the_upstreams_breakdowns_and_fingerprint(
    settings: Settings, services: Services, user_key: str, fake_upstream: FakeUpstream
) -> None:
    """keel rebuilds the usage chunk from what it metered; the upstream's token breakdowns,
    system_fingerprint and service_tier ride along instead of being dropped."""
    fake_upstream.override = {
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                  "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 3}},
        "system_fingerprint": "fp_test", "service_tier": "default"}
    with serve_app(create_app(settings, services=services)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key=user_key, max_retries=0)
        chunks = list(client.chat.completions.create(
            model="fake-gpt", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "a question nobody cached"}]))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 7)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 4
    assert last.usage.completion_tokens_details is not None
    assert last.usage.completion_tokens_details.reasoning_tokens == 3
    assert last.system_fingerprint == "fp_test" and last.service_tier == "default"
    assert all(c.usage is None for c in chunks[:-1])
