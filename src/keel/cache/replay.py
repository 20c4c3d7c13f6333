"""Cached answers as responses or SSE chunk streams, and streamed answers back into one.

A hit on a streaming request is replayed as a proper OpenAI stream: a role chunk, the text
in pieces, a finish chunk and (when ``stream_options.include_usage``) a usage chunk. A
streamed miss is reassembled into one ``chat.completion`` / ``text_completion`` object and
stored once the stream has finished normally.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

JSON = dict[str, Any]
_PIECE = 64  # characters per replayed chunk: small enough to look live, few enough to be cheap


def fresh(response: JSON, request_id: str) -> JSON:
    """The cached response with this request's id and time."""
    out = dict(response)
    out["id"] = f"{'chatcmpl' if out.get('object') == 'chat.completion' else 'cmpl'}-{request_id}"
    out["created"] = int(time.time())
    return out


async def replay(response: JSON, include_usage: bool) -> AsyncGenerator[JSON, None]:
    chat = response.get("object") == "chat.completion"
    base = {"id": response["id"], "created": response["created"], "model": response.get("model"),
            "object": "chat.completion.chunk" if chat else "text_completion"}
    for choice in response.get("choices") or []:
        idx = choice.get("index", 0)
        if chat:
            msg = choice.get("message") or {}
            text = msg.get("content") or ""
            yield {**base, "choices": [{"index": idx, "delta": {"role": msg.get("role",
                                                                               "assistant"),
                                                               "content": ""},
                                        "finish_reason": None}]}
            for i in range(0, len(text), _PIECE):
                yield {**base, "choices": [{"index": idx, "delta": {"content": text[i:i + _PIECE]},
                                            "finish_reason": None}]}
            yield {**base, "choices": [{"index": idx, "delta": {},
                                        "finish_reason": choice.get("finish_reason", "stop")}]}
        else:
            text = choice.get("text") or ""
            for i in range(0, len(text), _PIECE):
                yield {**base, "choices": [{"index": idx, "text": text[i:i + _PIECE],
                                            "finish_reason": None}]}
            yield {**base, "choices": [{"index": idx, "text": "",
                                        "finish_reason": choice.get("finish_reason", "stop")}]}
    if include_usage and response.get("usage"):
        yield {**base, "choices": [], "usage": response["usage"]}


class StreamAssembler:
    """Collects a chat or completion stream; :meth:`result` is the whole answer or None."""

    def __init__(self) -> None:
        self.chat = True
        self.meta: JSON = {}
        self.texts: dict[int, list[str]] = {}
        self.roles: dict[int, str] = {}
        self.finish: dict[int, str | None] = {}
        self.usage: JSON | None = None
        self.unsupported = False  # tool calls, logprobs...: not stored

    def add(self, chunk: JSON) -> None:
        if not self.meta:
            self.meta = {k: chunk.get(k) for k in ("id", "created", "model",
                                                    "system_fingerprint")}
            self.chat = chunk.get("object", "chat.completion.chunk") == "chat.completion.chunk"
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            idx = int(choice.get("index", 0))
            if choice.get("logprobs"):
                self.unsupported = True
            if self.chat:
                delta = choice.get("delta") or {}
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.unsupported = True
                if delta.get("role"):
                    self.roles[idx] = delta["role"]
                text = delta.get("content")
            else:
                text = choice.get("text")
            if isinstance(text, str) and text:
                self.texts.setdefault(idx, []).append(text)
            if choice.get("finish_reason"):
                self.finish[idx] = choice["finish_reason"]

    def result(self) -> JSON | None:
        indexes = sorted(set(self.texts) | set(self.finish))
        if self.unsupported or not indexes or any(self.finish.get(i) is None for i in indexes):
            return None
        choices = []
        for i in indexes:
            text = "".join(self.texts.get(i, []))
            if self.chat:
                choices.append({"index": i, "message": {"role": self.roles.get(i, "assistant"),
                                                        "content": text},
                                "finish_reason": self.finish[i]})
            else:
                choices.append({"index": i, "text": text, "finish_reason": self.finish[i]})
        out: JSON = {**self.meta, "object": "chat.completion" if self.chat else "text_completion",
                     "choices": choices}
        if self.usage:
            out["usage"] = self.usage
        return out
