"""The metering stage: token usage, latency, time to first token and USD cost."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

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
    if "message" in choice:
        return content_text((choice.get("message") or {}).get("content"))
    if "delta" in choice:
        return content_text((choice.get("delta") or {}).get("content"))
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _usage(data: JSON | None) -> Usage | None:
    u = (data or {}).get("usage")
    if not isinstance(u, dict):
        return None
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))


class MeteringStage:
    name = "metering"

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        await call_next(ctx)
        if ctx.chunks is not None:
            ctx.chunks = self._meter_stream(ctx, ctx.chunks)
            return
        resp = ctx.response or {}
        if ctx.route != "embeddings":
            ctx.output_text = "".join(_choice_text(c) for c in resp.get("choices") or [])
        usage = _usage(resp)
        if usage is None:
            usage = Usage(_estimate_tokens(_prompt_text(ctx.body)),
                          _estimate_tokens(ctx.output_text))
        self._finish(ctx, usage)

    async def _meter_stream(
        self, ctx: RequestContext, chunks: AsyncGenerator[JSON, None]
    ) -> AsyncGenerator[JSON, None]:
        parts: list[str] = []
        usage: Usage | None = None
        try:
            async for chunk in chunks:
                if ctx.ttft_ms is None and chunk.get("choices"):
                    ctx.ttft_ms = ctx.elapsed_ms()
                for choice in chunk.get("choices") or []:
                    parts.append(_choice_text(choice))
                usage = _usage(chunk) or usage
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
