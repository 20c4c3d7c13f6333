"""``/v1/reasoning/runs``: start a run (202), list, read one, follow its events (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from keel.errors import InvalidRequest, KeelError, NotFound
from keel.gateway.context import Principal
from keel.gateway.http import ORJSONResponse, error_response, read_body
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import parse_json
from keel.reasoning.service import ReasoningService
from keel.reasoning.store import Run


class ReasoningRoutes:
    def __init__(self, svc: Services, service: ReasoningService) -> None:
        self.svc = svc
        self.service = service

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/reasoning/runs", self.create, methods=["POST"],
                        summary="Start a reasoning run (202)", status_code=202)
        r.add_api_route("/v1/reasoning/runs", self.list, methods=["GET"],
                        summary="List reasoning runs")
        r.add_api_route("/v1/reasoning/runs/{run_id}", self.get, methods=["GET"],
                        summary="A reasoning run with every sample")
        r.add_api_route("/v1/reasoning/runs/{run_id}/events", self.events, methods=["GET"],
                        summary="Progress of a run (server-sent events)")
        return r

    async def create(self, request: Request) -> Response:
        try:
            principal = await authenticate(self.svc, request)
            body = parse_json(await read_body(request, self.svc.settings.server.max_body_bytes))
            reasoner, messages, n, budget = _parse(body)
            run = await self.service.submit(principal, reasoner, messages, n, budget)
        except KeelError as exc:
            return error_response(exc)
        return ORJSONResponse(run.public(), status_code=202,
                              headers={"location": f"/v1/reasoning/runs/{run.id}"})

    async def list(self, request: Request) -> Response:
        try:
            p = await authenticate(self.svc, request)
        except KeelError as exc:
            return error_response(exc)
        runs = await self.service.store.recent(None if p.admin else p.tenant, 100)
        return ORJSONResponse({"object": "list", "data": [r.public() for r in runs]})

    async def _run(self, request: Request, run_id: str) -> tuple[Principal, Run]:
        p = await authenticate(self.svc, request)
        run = await self.service.store.get(run_id)
        if run is None or not (p.admin or run.tenant == p.tenant):
            raise NotFound(f"reasoning run {run_id!r} does not exist", param="run_id")
        return p, run

    async def get(self, request: Request, run_id: str) -> Response:
        try:
            _, run = await self._run(request, run_id)
        except KeelError as exc:
            return error_response(exc)
        out = run.public(with_samples=True)
        out["events"] = await self.service.store.events(run_id)
        return ORJSONResponse(out)

    async def events(self, request: Request, run_id: str) -> Response:
        try:
            await self._run(request, run_id)
            after = int(request.headers.get("last-event-id") or 0)
        except ValueError:
            return error_response(InvalidRequest("Last-Event-ID must be a number"))
        except KeelError as exc:
            return error_response(exc)

        async def sse() -> AsyncIterator[bytes]:
            async for ev in self.service.events(run_id, after):
                yield (f"id: {ev['seq']}\nevent: {ev['kind']}\n".encode()
                       + b"data: " + orjson.dumps(ev) + b"\n\n")

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})


def _parse(body: object) -> tuple[str, list[dict[str, object]], int | None, float | None]:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = set(body) - {"reasoner", "question", "messages", "n", "budget_usd"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))} (allowed: "
                             "reasoner, question or messages, n, budget_usd)")
    reasoner = body.get("reasoner")
    if not isinstance(reasoner, str) or not reasoner:
        raise InvalidRequest("field 'reasoner' (a configured reasoner name) is required",
                             param="reasoner")
    question, messages = body.get("question"), body.get("messages")
    if (question is None) == (messages is None):
        raise InvalidRequest("give exactly one of 'question' (a string) or 'messages' "
                             "(chat messages)", param="question")
    if question is not None:
        if not isinstance(question, str) or not question.strip():
            raise InvalidRequest("field 'question' must be a non-empty string",
                                 param="question")
        messages = [{"role": "user", "content": question}]
    else:
        from keel.gateway.validation import validate_chat

        validate_chat({"model": "-", "messages": messages})
    assert isinstance(messages, list)
    return reasoner, messages, body.get("n"), body.get("budget_usd")
