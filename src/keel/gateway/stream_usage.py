"""OpenAI's streaming usage contract, applied once for every provider and cache replay.

Usage is sent only when the client asked with ``stream_options.include_usage``, and then
in one extra chunk after the last choice chunk, with ``choices: []``. Providers and
upstreams put usage wherever they like (llama.cpp on the finish chunk, OpenAI in its own
chunk, keel always asks upstreams for it to meter): it is stripped from every chunk here.
"""

from __future__ import annotations

from typing import Any

from keel.gateway.context import RequestContext

JSON = dict[str, Any]
# fields of OpenAI's usage chunk that describe the response, kept on keel's own
CARRIED = ("system_fingerprint", "service_tier")


def wants_usage(body: JSON) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


class StreamUsage:
    """Strips usage from chunks on the way out and builds the final usage chunk."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.include = wants_usage(ctx.body)
        self.last: JSON | None = None
        self.seen: JSON | None = None
        self.carried: JSON = {}  # top-level fields of the upstream's usage chunk

    def strip(self, chunk: JSON) -> JSON | None:
        """The chunk as the client sees it; ``None`` for a usage-only chunk."""
        usage = chunk.get("usage")
        if "usage" in chunk:
            if isinstance(usage, dict):
                self.seen = usage
                self.carried = {k: chunk[k] for k in CARRIED if chunk.get(k) is not None}
            chunk = {k: v for k, v in chunk.items() if k != "usage"}
            if not chunk.get("choices"):
                return None
        self.last = chunk
        return chunk

    def final(self) -> JSON | None:
        """The usage chunk to send after the last choice chunk, if the client asked."""
        if not self.include or self.last is None:
            return None
        u = self.ctx.usage
        usage: JSON = {"prompt_tokens": u.prompt_tokens,
                       "completion_tokens": u.completion_tokens}
        if not (u.prompt_tokens or u.completion_tokens) and self.seen is not None:
            usage = dict(self.seen)  # a cache replay: the stage that metered is skipped
        usage["total_tokens"] = (int(usage.get("prompt_tokens") or 0)
                                 + int(usage.get("completion_tokens") or 0))
        if self.seen is not None:  # the upstream's breakdowns (cached, reasoning tokens...)
            for key, value in self.seen.items():
                if key.endswith("_details") and isinstance(value, dict):
                    usage.setdefault(key, value)
        last = self.last
        out: JSON = {"id": last.get("id"), "object": last.get("object"),
                     "created": last.get("created"), "model": last.get("model")}
        for key in CARRIED:
            value = self.carried.get(key, last.get(key))
            if value is not None:
                out[key] = value
        return {**out, "choices": [], "usage": usage}
