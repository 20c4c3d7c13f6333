"""Tee a chat completion into a hive stream: ``x-keel-hive: TASK/STREAM``.

The stage sits right after the firewall (so a blocked prompt writes nothing) and before
the cache (so a cached answer is teed too). It checks the header, the writer's right to
the stream, that the task exists and the tenant's quotas before any model work (a 4xx
otherwise), then wraps the answer: a streamed answer is appended chunk by chunk as the
model produces it, so the next agent reads it before it is finished; a plain answer is
appended whole. An ``end`` record closes the stream either way. A hive failure in
mid-answer (quota, disk) stops the tee, never the caller's answer; the request log notes
it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from keel.errors import InvalidRequest, KeelError
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next
from keel.gateway.validation import content_text
from keel.hive.framing import record_bytes
from keel.hive.model import HiveConflict, NewRecord, check_name
from keel.hive.service import HiveService

HEADER = "x-keel-hive"
log = logging.getLogger("keel.hive")
JSON = dict[str, Any]


def _text(chunk: JSON) -> str:
    parts = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        for key in ("delta", "message"):
            part = choice.get(key)
            if isinstance(part, dict):
                parts.append(content_text(part.get("content")))
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
    return "".join(parts)


class HiveTeeStage:
    name = "hive"

    def __init__(self, hive: HiveService) -> None:
        self.hive = hive

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        target = ctx.headers.get(HEADER)
        if not target or ctx.route == "embeddings":
            await call_next(ctx)
            return
        task, sep, stream = target.strip().partition("/")
        if not sep:
            raise InvalidRequest(f"header {HEADER} must be TASK/STREAM, got {target[:80]!r}",
                                 param=HEADER)
        check_name(task, "task")
        check_name(stream, "stream")
        self.hive.check_writer(ctx.principal, stream)
        info = await self.hive.task(ctx.principal.tenant, task)
        have = next((s for s in info.streams if s.name == stream), None)
        if have is not None and have.ended:
            raise HiveConflict(f"hive stream {task}/{stream} has ended; tee into a new stream")
        offset = have.records if have is not None else 0
        # quota before any model work: a full tenant gets a 429, not an answer whose
        # header points at a stream that was never written
        end = NewRecord("end", "", ctx.principal.agent or stream)
        await self.hive.check_quota(ctx.principal.tenant, task, stream, record_bytes(end))
        await call_next(ctx)
        ctx.response_headers[HEADER] = f"hive://{task}/{stream}@{offset}"
        if ctx.chunks is not None:
            ctx.chunks = self._tee(ctx, task, stream, ctx.chunks)
            return
        await self._write(ctx, task, stream, [("tokens", _text(ctx.response or {})),
                                              ("end", "")])

    async def _write(self, ctx: RequestContext, task: str, stream: str,
                     items: list[tuple[str, str]]) -> bool:
        writer = ctx.principal.agent or stream
        recs = [NewRecord(k, d, writer) for k, d in items if d or k == "end"]
        try:
            await self.hive.append(ctx.principal, task, stream, recs, checked=True)
            return True
        except KeelError as exc:
            ctx.decide(self.name, "tee_failed", exc.message[:200])
            log.warning("hive tee into %s/%s stopped: %s", task, stream, exc.message)
            return False

    async def _tee(self, ctx: RequestContext, task: str, stream: str,
                   chunks: AsyncGenerator[JSON, None]) -> AsyncGenerator[JSON, None]:
        live = True
        try:
            async for chunk in chunks:
                if live and (text := _text(chunk)):
                    live = await self._write(ctx, task, stream, [("tokens", text)])
                yield chunk
        finally:
            if live:
                await self._write(ctx, task, stream, [("end", "")])
            await chunks.aclose()
