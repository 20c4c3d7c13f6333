"""Scripted fakes for tests about keel's own logic (never a stand-in for the real model).

``FakeUpstream`` is a real HTTP server on 127.0.0.1 that speaks the OpenAI wire format
with canned answers, so the gateway's HTTP provider, retries and streaming are exercised
for real.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FakeUpstream:
    """Answers ``reply`` with fixed usage; can fail the first ``fail_first`` calls with 503."""

    reply: str = "hello from the fake upstream"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    fail_first: int = 0
    fail_status: int = 503  # the status of the ``fail_first`` failures
    status: int = 200
    # a Retry-After header sent with every failure (``fail_first`` and ``status``)
    retry_after: str | None = None
    delay_s: float = 0.0  # sleep before answering a chat/completions call
    # fields merged into every non-streamed answer and the streamed usage chunk, to script
    # upstream nonsense (``{"usage": {"prompt_tokens": 1e30}}``, ``{"choices": "nope"}``)
    override: dict[str, Any] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append({"body": body, "headers": dict(request.headers),
                           "at": time.monotonic()})
        failed = {"retry-after": self.retry_after} if self.retry_after is not None else {}
        if len(self.calls) <= self.fail_first:
            return web.json_response({"error": {"message": "warming up"}},
                                     status=self.fail_status, headers=failed)
        if self.status != 200:
            return web.json_response({"error": {"message": "scripted failure"}},
                                     status=self.status, headers=failed)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": self.prompt_tokens + self.completion_tokens}
        if not body.get("stream"):
            return web.json_response({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": self.reply}}],
                "usage": usage, **self.override,
            })
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for word in self.reply.split(" "):
            chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": body.get("model"),
                     "choices": [{"index": 0, "delta": {"content": word + " "},
                                  "finish_reason": None}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        final = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                 "created": int(time.time()), "model": body.get("model"),
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {**final, "choices": [], "usage": usage,
                 **{k: v for k, v in self.override.items() if k != "choices"}}
            await resp.write(b"data: " + json.dumps(u).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        """Scripted embeddings: hashed bag of lower-case words in 64 dimensions, unnormalised,
        rows returned in reverse order (clients must sort by ``index``)."""
        body = await request.json()
        self.calls.append({"body": body, "headers": dict(request.headers), "embeddings": True})
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        rows = []
        for i, text in enumerate(texts):
            vec = [0.0] * 64
            for word in text.lower().replace("?", " ").split():
                vec[sum(map(ord, word)) % 64] += 3.0
            rows.append({"object": "embedding", "index": i, "embedding": vec})
        return web.json_response({"object": "list", "data": rows[::-1], "model": body["model"],
                                  "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    def start(self) -> FakeUpstream:
        self.port = free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._chat)
            app.router.add_post("/v1/completions", self._chat)
            app.router.add_get("/v1/models", self._models)
            app.router.add_post("/v1/embeddings", self._embeddings)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
