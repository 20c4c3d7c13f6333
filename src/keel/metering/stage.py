"""The metering stage: token usage, latency, time to first token and USD cost."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from keel.errors import UpstreamError
from keel.gateway.context import RequestContext, Usage
from keel.gateway.pipeline import Next
from keel.gateway.validation import content_text

JSON = dict[str, Any]


def _estimate_tokens(text: str) -> int:
    """Rough token count (~4 chars/token) for upstreams that report no usage."""
    return max(1, (len(text) + 3) // 4) if text else 0


def _prompt_text(body: JSON) -> str:
    if "messages" in body:
        return "\n".join(content_text(m.get("content")) for m in body["messages"])
    p = body.get("prompt", "")
    return p if isinstance(p, str) else "\n".join(p)


def _choice_text(choice: JSON) -> str:
    for key in ("message", "delta"):
        if key in choice:
            part = choice.get(key)
            return content_text(part.get("content")) if isinstance(part, dict) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


# The most tokens one request can plausibly report. A count outside 0..MAX_USAGE_TOKENS (or
# not a whole number) is upstream nonsense: the request fails with 502 rather than storing
# it, so one bad answer can never poison the request log, spend totals or token counters.
MAX_USAGE_TOKENS = 10**9


def _count(u: JSON, key: str, model: str) -> int:
    v = u.get(key)
    if v is None:
        return 0
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_USAGE_TOKENS:
        raise UpstreamError(
            f"model {model!r}: upstream reported an impossible usage.{key} of {v!r} "
            f"(keel accepts whole numbers from 0 to {MAX_USAGE_TOKENS:,})")
    return v


def _usage(data: JSON | None, model: str = "?") -> Usage | None:
    u = (data or {}).get("usage")
    if u is None:
        return None
    if not isinstance(u, dict):
        raise UpstreamError(f"model {model!r}: upstream sent a usage that is not an object")
    return Usage(_count(u, "prompt_tokens", model), _count(u, "completion_tokens", model))


def _choices(data: JSON, model: str) -> list[JSON]:
    choices = data.get("choices")
    if choices is None:
        return []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise UpstreamError(
            f"model {model!r}: upstream answered with malformed 'choices' (not a list of "
            "objects)")
    return choices


class MeteringStage:
    name = "metering"

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        await call_next(ctx)
        if ctx.chunks is not None:
            ctx.chunks = self._meter_stream(ctx, ctx.chunks)
            return
        resp = ctx.response or {}
        name = ctx.model.name
        if ctx.route != "embeddings":
            ctx.output_text = "".join(_choice_text(c) for c in _choices(resp, name))
        usage = _usage(resp, name)
        if usage is None:
            usage = Usage(_estimate_tokens(_prompt_text(ctx.body)),
                          _estimate_tokens(ctx.output_text))
        self._finish(ctx, usage)

    async def _meter_stream(
        self, ctx: RequestContext, chunks: AsyncGenerator[JSON, None]
    ) -> AsyncGenerator[JSON, None]:
        parts: list[str] = []
        usage: Usage | None = None
        name = ctx.model.name
        try:
            async for chunk in chunks:
                choices = _choices(chunk, name)
                if ctx.ttft_ms is None and choices:
                    ctx.ttft_ms = ctx.elapsed_ms()
                for choice in choices:
                    parts.append(_choice_text(choice))
                usage = _usage(chunk, name) or usage
                yield chunk
        finally:
            ctx.output_text = "".join(parts)
            if usage is None:
                usage = Usage(_estimate_tokens(_prompt_text(ctx.body)),
                              _estimate_tokens(ctx.output_text))
            self._finish(ctx, usage)

    @staticmethod
    def _finish(ctx: RequestContext, usage: Usage) -> None:
        ctx.usage = usage
        ctx.cost_usd = ctx.model.cost_usd(usage.prompt_tokens, usage.completion_tokens)
        ctx.latency_ms = ctx.elapsed_ms()
        ctx.response_headers["x-keel-cost-usd"] = f"{ctx.cost_usd:.8f}"
