"""An upstream that echoes the request never hands keel's upstream API key to a client.

The upstream is a real aiohttp server on 127.0.0.1 that answers every call with an error
quoting the headers it received (as misconfigured proxies and some model servers do).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from conftest import make_settings
from keel.config import Settings
from keel.gateway.services import Services
from keel.redaction import Redactor

SECRET = "sk-live-upstream-9f8e7d6c5b4a"


class LoopbackServer:
    """A real aiohttp server on 127.0.0.1 in its own thread, answering one POST route."""

    def __init__(self, path: str,
                 answer: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def start() -> None:
            app = web.Application()
            app.router.add_post(path, answer)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class EchoUpstream(LoopbackServer):
    def __init__(self, status: int) -> None:
        self.status = status

        async def answer(request: web.Request) -> web.StreamResponse:
            headers = dict(request.headers)
            raw_key = headers.get("Authorization", "").removeprefix("Bearer ")
            message = (f"invalid request: you sent {json.dumps(headers)}; key {raw_key} "
                       f"(b64 {base64.b64encode(raw_key.encode()).decode()})")
            body = await request.json()
            if body.get("stream"):
                resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
                await resp.prepare(request)
                event = {"error": {"message": message}}
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                return resp
            return web.json_response({"error": {"message": message, "type": "invalid"}},
                                     status=self.status)

        super().__init__("/v1/chat/completions", answer)


@pytest.fixture(params=[400, 422, 500])
def echo(request: pytest.FixtureRequest) -> Iterator[EchoUpstream]:
    up = EchoUpstream(request.param)
    yield up
    up.stop()


@pytest.fixture
def settings(tmp_path: Path, echo: EchoUpstream, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, models=[{
        "name": "echo-gpt", "provider": "openai", "upstream": "gpt-4o-mini",
        "base_url": f"http://127.0.0.1:{echo.port}/v1", "api_key": SECRET}])
    s.openai.retries = 0
    s.tools.enabled = False
    return s


async def test_upstream_error_echoing_the_key_is_redacted(
    client: httpx.AsyncClient, services: Services, user_key: str, echo: EchoUpstream
) -> None:
    auth = {"Authorization": f"Bearer {user_key}"}
    chat: dict[str, Any] = {"model": "echo-gpt",
                            "messages": [{"role": "user", "content": "capital of France?"}]}
    for body in (chat, {**chat, "stream": True}):
        r = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code >= 400, r.text
        text = r.text
        assert SECRET not in text
        assert base64.b64encode(SECRET.encode()).decode() not in text
        assert "sk-live" not in text
        assert "invalid request" in text  # the safe part of the upstream's message remains
        await services.request_log.flush()
    rows = await services.db.run(lambda c: c.exec_driver_sql(
        "SELECT * FROM request_log").fetchall())
    assert len(rows) == 2 and SECRET not in repr(rows)


def test_redactor_keeps_ordinary_messages() -> None:
    r = Redactor(["hunter2-secret-value"])
    plain = "This model's maximum context length is 4096 tokens; max_tokens must be <= 4096"
    assert r(plain) == plain
    assert r("Bearer abcdefghijklmnop and hunter2-secret-value") == "[redacted] and [redacted]"
    assert r('{"api_key": "zzzzzzzz", "model": "x"}') == '{"[redacted]", "model": "x"}'
    assert len(r("x" * 5000)) < 320


class EchoTool(LoopbackServer):
    """A plain HTTP tool that answers with the headers it was sent (a real server)."""

    def __init__(self) -> None:

        async def answer(request: web.Request) -> web.Response:
            return web.json_response({"you_sent": dict(request.headers)}, status=400)

        super().__init__("/tool", answer)


async def test_http_tool_echoing_its_credentials_is_masked() -> None:
    from contextlib import AsyncExitStack

    from keel.tools.settings import HttpToolSettings
    from keel.tools.upstreams import HttpToolUpstream

    tool_token = "tool-token-5b4a3c2d1e"
    server = EchoTool()
    try:
        up = HttpToolUpstream(HttpToolSettings(
            name="echo", url=f"http://127.0.0.1:{server.port}/tool",
            headers={"authorization": f"Bearer {tool_token}"}))  # type: ignore[dict-item]
        async with AsyncExitStack() as stack:
            await up.start(stack)
            result = await up.call("echo", {"q": "x"})
        dumped = result.model_dump_json()
        assert result.is_error and tool_token not in dumped and "[redacted]" in dumped
    finally:
        server.stop()
