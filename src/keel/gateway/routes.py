"""OpenAI-compatible endpoints: chat completions, completions, embeddings, models."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from keel.errors import KeelError
from keel.gateway.context import ANONYMOUS, JSON, Principal, RequestContext, Route
from keel.gateway.http import (
    ORJSONResponse,
    bearer_token,
    client_ip,
    error_response,
    forwarded_ip,
    log,
    read_body,
    request_id_headers,
)
from keel.gateway.services import Services
from keel.gateway.stream_usage import StreamUsage
from keel.gateway.validation import (
    parse_json,
    validate_chat,
    validate_completion,
    validate_embeddings,
)

_VALIDATORS = {"chat": validate_chat, "completions": validate_completion}


async def authenticate(svc: Services, request: Request) -> Principal:
    if not svc.settings.auth_required:
        return ANONYMOUS
    return await svc.keys.resolve(bearer_token(request))


class OpenAIRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        # Request ids: a random per-process prefix plus a counter (no syscall per request).
        self._ids = itertools.count(1)
        self._id_prefix = "req_" + os.urandom(6).hex()

    def router(self) -> APIRouter:
        r = APIRouter()
        hot = [("/v1/chat/completions", self.chat, "Create a chat completion (OpenAI)"),
               ("/v1/completions", self.completions, "Create a text completion (OpenAI)"),
               ("/v1/embeddings", self.embeddings, "Create embeddings (OpenAI)")]
        # The hot endpoints are plain Starlette routes (FastAPI's dependency machinery costs
        # ~20 µs per request and they parse their own bodies); the APIRoutes registered after
        # them are never reached for POST and only describe the endpoints in the OpenAPI schema.
        for path, endpoint, _ in hot:
            r.add_route(path, endpoint, methods=["POST"], include_in_schema=False)
        for path, endpoint, summary in hot:
            r.add_api_route(path, endpoint, methods=["POST"], summary=summary)
        r.add_api_route("/v1/models", self.models, methods=["GET"], summary="List models")
        r.add_api_route("/v1/models/{model_id:path}", self.model, methods=["GET"],
                        summary="Retrieve a model")
        return r

    # -- endpoints --------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._handle(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._handle(request, "completions")

    async def embeddings(self, request: Request) -> Response:
        return await self._handle(request, "embeddings")

    async def models(self, request: Request) -> Response:
        await authenticate(self.svc, request)
        return ORJSONResponse({"object": "list",
                               "data": [_model_card(s) for s in self.svc.models.specs()]})

    async def model(self, request: Request, model_id: str) -> Response:
        await authenticate(self.svc, request)
        return ORJSONResponse(_model_card(self.svc.models.find(model_id)))

    # -- the shared request path ---------------------------------------------------------

    async def _handle(self, request: Request, route: Route) -> Response:
        svc = self.svc
        request_id = f"{self._id_prefix}{next(self._ids):08x}"
        try:
            principal = await authenticate(svc, request)
            body = parse_json(await read_body(request, svc.settings.server.max_body_bytes))
            if route == "embeddings":
                validate_embeddings(body)
                spec = svc.models.get(body["model"], kind="embedding")
            else:
                _VALIDATORS[route](body)
                spec = svc.models.get(body["model"])
        except KeelError as exc:
            return error_response(exc, request_id=request_id)
        ctx = RequestContext(
            id=request_id, route=route, body=body, model=spec, principal=principal,
            client_ip=client_ip(request, svc.trusted_proxies),
            headers=dict(request.headers), stream=bool(body.get("stream")),
            forwarded_ip=forwarded_ip(request, svc.trusted_proxies),
        )
        try:
            if ctx.stream:  # the streaming response stops on a disconnect by itself
                await svc.pipeline(ctx)
            elif not await self._run_unless_gone(ctx, request.receive):
                return self._gone(ctx)
            if ctx.chunks is not None:
                return await self._stream(ctx)
        except KeelError as exc:
            return self._fail(ctx, exc)
        except Exception:
            log.exception("request %s failed", request_id)
            return self._fail(ctx, KeelError(f"internal error (request id {request_id})"))
        headers = {**request_id_headers(ctx.id), **ctx.response_headers}
        svc.finish(ctx)
        return Response(orjson.dumps(ctx.response), media_type="application/json",
                        headers=headers)

    async def _run_unless_gone(self, ctx: RequestContext, receive: Receive) -> bool:
        """Run the pipeline, cancelling it (and so the upstream request, with no retry)
        if the client disconnects first; False then. Starlette does not cancel handlers
        on a disconnect, so the pipeline races a wait for ``http.disconnect``: with the
        body read, the next ASGI message is that (or nothing until the response is sent)."""
        work = asyncio.ensure_future(self.svc.pipeline(ctx))
        watch = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not work.done():
                work.cancel()
        if work.cancelled() or not work.done():
            try:  # let the cancelled pipeline unwind (closing the upstream connection)
                await work
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
            except Exception:
                pass
            return False
        work.result()  # re-raise what the pipeline raised
        return True

    def _gone(self, ctx: RequestContext) -> Response:
        # 499: nginx's "client closed request", as the streaming path logs
        ctx.status = 499
        ctx.latency_ms = ctx.elapsed_ms()
        self.svc.finish(ctx)
        return Response(status_code=499, headers=request_id_headers(ctx.id))

    def _fail(self, ctx: RequestContext, exc: KeelError) -> Response:
        ctx.error = exc
        ctx.status = exc.http_status
        ctx.latency_ms = ctx.elapsed_ms()
        self.svc.finish(ctx)
        return error_response(exc, request_id=ctx.id)

    async def _stream(self, ctx: RequestContext) -> Response:
        chunks = ctx.chunks
        assert chunks is not None
        # Pull the first chunk before answering so early failures get a real status code.
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await chunks.aclose()
            raise
        headers = {**request_id_headers(ctx.id), "cache-control": "no-cache",
                   **ctx.response_headers}
        return StreamingResponse(self._sse(ctx, first, chunks),
                                 media_type="text/event-stream", headers=headers)

    async def _sse(
        self, ctx: RequestContext, first: JSON | None, chunks: AsyncGenerator[JSON, None]
    ) -> AsyncIterator[bytes]:
        usage = StreamUsage(ctx)
        try:
            if first is not None and (out := usage.strip(first)) is not None:
                yield b"data: " + orjson.dumps(out) + b"\n\n"
            async for chunk in chunks:
                if (out := usage.strip(chunk)) is not None:
                    yield b"data: " + orjson.dumps(out) + b"\n\n"
            if (final := usage.final()) is not None:
                yield b"data: " + orjson.dumps(final) + b"\n\n"
            yield b"data: [DONE]\n\n"
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
        except BaseException:  # client went away (CancelledError) or a bug
            ctx.status = 499 if ctx.error is None else ctx.status
            raise
        finally:
            await chunks.aclose()
            self.svc.finish(ctx)


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away (the request body was already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _model_card(spec: Any) -> JSON:
    return {
        "id": spec.name, "object": "model", "created": 0, "owned_by": spec.provider,
        "keel": {"kind": spec.kind, "context": spec.context,
                 "input_usd_per_1m": spec.input_usd_per_1m,
                 "output_usd_per_1m": spec.output_usd_per_1m},
    }
