"""An upstream that puts keel's own upstream API key into a SUCCESSFUL answer (echoing the
Authorization header it received) never hands it to a client, the cache or the request log.

The upstream is a real aiohttp server on 127.0.0.1; streamed answers come in 3-character
pieces, so the key is split across chunks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from test_security_upstream_echo import LoopbackServer

from conftest import make_settings
from keel.cache.stage import CacheStage
from keel.config import Settings
from keel.gateway.services import Services

SECRET = "upstreamsecretxyz987654321"


class ChattyUpstream(LoopbackServer):
    """Answers 200 with ``here: <the Authorization header it received>``."""

    def __init__(self) -> None:
        async def answer(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            text = f"here: {request.headers.get('Authorization', '')} (that is all)"
            base = {"id": "chatcmpl-echo", "created": 1, "model": body.get("model")}
            if not body.get("stream"):
                return web.json_response({
                    **base, "object": "chat.completion",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 9,
                              "total_tokens": 14}})
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            for i in range(0, len(text), 3):
                chunk = {**base, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": {"content": text[i:i + 3]},
                                      "finish_reason": None}]}
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            final = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp

        super().__init__("/v1/chat/completions", answer)


@pytest.fixture
def chatty() -> Iterator[ChattyUpstream]:
    up = ChattyUpstream()
    yield up
    up.stop()


@pytest.fixture
def settings(tmp_path: Path, chatty: ChattyUpstream, monkeypatch: pytest.MonkeyPatch
             ) -> Settings:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, models=[{
        "name": "fake", "provider": "openai", "upstream": "gpt-4o-mini",
        "base_url": f"http://127.0.0.1:{chatty.port}/v1", "api_key": SECRET}])
    s.openai.retries = 0
    s.tools.enabled = False
    s.request_log.flush_interval_s = 0.02
    return s


def _stored_anywhere(data_dir: Path) -> list[str]:
    """Files under the data dir whose bytes hold the secret (any case)."""
    hits = []
    for f in data_dir.rglob("*"):
        if f.is_file() and SECRET.encode() in f.read_bytes().lower():
            hits.append(str(f))
    return hits


def _streamed_text(raw: str) -> str:
    out = []
    for line in raw.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices") or []:
                out.append((c.get("delta") or {}).get("content") or "")
    return "".join(out)


async def test_successful_answer_echoing_the_key_is_masked_everywhere(
    client: httpx.AsyncClient, services: Services, user_key: str, settings: Settings
) -> None:
    other_key = services.keys.create("acme", agent="bot-2").secret
    chat: dict[str, Any] = {"model": "fake",
                            "messages": [{"role": "user", "content": "what key do you see?"}]}
    for key in (user_key, other_key):  # the second one may be served from the cache
        r = await client.post("/v1/chat/completions", json=chat,
                              headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        content = r.json()["choices"][0]["message"]["content"]
        assert SECRET not in r.text.lower()
        assert content == "here: Bearer [redacted] (that is all)"
        await services.get(CacheStage).drain()
    r = await client.post("/v1/chat/completions", json={**chat, "stream": True},
                          headers={"Authorization": f"Bearer {user_key}"})
    assert r.status_code == 200, r.text
    assert SECRET not in r.text.lower()
    assert _streamed_text(r.text) == "here: Bearer [redacted] (that is all)"
    await services.request_log.flush()
    await services.get(CacheStage).drain()
    assert _stored_anywhere(Path(settings.data_dir)) == []


async def test_streamed_answer_split_secret_is_masked_uncached(
    client: httpx.AsyncClient, services: Services, user_key: str
) -> None:
    body = {"model": "fake", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "stream the key you see"}]}
    r = await client.post("/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {user_key}",
                                   "Cache-Control": "no-cache"})
    assert r.status_code == 200, r.text
    assert SECRET not in r.text.lower()
    assert _streamed_text(r.text) == "here: Bearer [redacted] (that is all)"
    assert '"usage"' in r.text  # the usage chunk still comes last
