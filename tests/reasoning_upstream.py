"""A scripted OpenAI-compatible upstream for reasoning runs (keel's own logic, not model
quality): a real aiohttp server on 127.0.0.1 that answers after a fixed delay.

Workers (requests without ``response_format``) answer ``answers[seed % len(answers)]``;
judges (``response_format`` json_schema) read the ids shown to them and answer valid JSON:
sub-judges keep the first ids, the final judge cites the first two plus one made-up id.
Every request is counted by kind and seed, and (``--log``) appended to a file, so a test in
another process can count what was requested. Runs in a thread (tests) or as a process::

    python tests/reasoning_upstream.py --port 8601 --delay 0.2 --log calls.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_IDS = re.compile(r"### Answer id (\w+)")


@dataclass
class ReasoningUpstream:
    answers: list[str] = field(default_factory=lambda: ["forty-two"])
    delay_s: float = 0.0
    judge_delay_s: float = 0.0
    fail_status: int = 0  # every worker call fails with this status
    fail_first: int = 0  # the first attempts of each seed fail with 503
    judge_text: str | None = None  # a fixed judge reply (unusable-judge tests)
    prompt_tokens: int = 20
    completion_tokens: int = 10
    log_path: str | None = None
    port: int = 0
    calls: Counter[str] = field(default_factory=Counter)  # "worker:SEED", "judge"
    bodies: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0  # worker calls being answered now
    peak_in_flight: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def worker_calls(self) -> int:
        return sum(c for k, c in self.calls.items() if k.startswith("worker:"))

    def _reply(self, body: dict[str, Any], text: str, completion: int) -> web.Response:
        return web.json_response({
            "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": self.prompt_tokens + completion}})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        judge = "response_format" in body
        key = "judge" if judge else f"worker:{body.get('seed')}"
        self.calls[key] += 1
        self.bodies.append(body)
        if self.log_path:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps({"key": key, "t": time.time()}) + "\n")
        if judge:
            await asyncio.sleep(self.judge_delay_s)
            return self._judge(body)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if self.fail_status:
            return web.json_response({"error": {"message": "scripted failure"}},
                                     status=self.fail_status)
        if self.calls[key] <= self.fail_first:
            return web.json_response({"error": {"message": "busy"}}, status=503)
        seed = int(body.get("seed") or 0)
        n = int(body.get("n") or 1)  # OpenAI's n: several choices in one answer
        resp = self._reply(body, self.answers[seed % len(self.answers)],
                           self.completion_tokens * n)
        if n > 1:
            data = json.loads(resp.text or "{}")
            data["choices"] = [{"index": i, "finish_reason": "stop", "message": {
                "role": "assistant", "content": self.answers[(seed + i) % len(self.answers)]}}
                for i in range(n)]
            return web.json_response(data)
        return resp

    def _judge(self, body: dict[str, Any]) -> web.Response:
        if self.judge_text is not None:
            return self._reply(body, self.judge_text, 5)
        user = body["messages"][-1]["content"]
        ids = _IDS.findall(user)
        schema = body["response_format"]["json_schema"]["schema"]["properties"]
        if "keep" in schema:
            keep = schema["keep"].get("maxItems", 2)
            out: dict[str, Any] = {"keep": ids[:keep], "rejected": [
                {"id": i, "reason": "weaker than the kept ones"} for i in ids[keep:]]}
        elif "best" in schema:
            out = {"best": ids[: schema["best"].get("maxItems", 2)]}
        else:
            out = {"rejected": [{"id": i, "reason": "contradicts the others"} for i in ids[2:3]],
                   "answer": "synthesised: " + " + ".join(ids[:2]),
                   "citations": [{"id": i, "insight": f"insight from {i}"} for i in ids[:2]]
                   + [{"id": "zz9", "insight": "a made-up id"}]}
        return self._reply(body, json.dumps(out), 30)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    def start(self) -> ReasoningUpstream:
        from fakes import free_port

        self.port = self.port or free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--judge-delay", type=float, default=0.0)
    ap.add_argument("--log", default=None)
    ap.add_argument("--completion-tokens", type=int, default=10)
    a = ap.parse_args()
    up = ReasoningUpstream(delay_s=a.delay, judge_delay_s=a.judge_delay, log_path=a.log,
                           port=a.port, completion_tokens=a.completion_tokens,
                           answers=["alpha", "beta", "gamma", "delta"])
    web.run_app(up.app(), host="127.0.0.1", port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
