"""``/v1/reasoning/runs``: start a run (202), list, read one, follow its events (SSE).

Starting a run meets the same front checks as ``/v1/chat/completions`` with a
``reasoner/<name>`` model: the firewall stage refuses banned end users, rate-limits watched
keys and judges the question (a block is a strike against the end user, a 403 before
anything is queued). The end user (the firewall's header or the ``user`` field) is kept
on the run and carried into its sample and judge calls.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from keel.errors import InvalidRequest, KeelError, NotFound
from keel.firewall.identity import end_user_id
from keel.gateway.context import JSON, Principal, RequestContext
from keel.gateway.http import (
    ORJSONResponse,
    client_ip,
    error_response,
    forwarded_ip,
    read_body,
)
from keel.gateway.pipeline import Stage
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import parse_json
from keel.reasoning.service import ReasoningService
from keel.reasoning.stage import PREFIX
from keel.reasoning.store import Run


async def _admitted(ctx: RequestContext) -> None:
    """The end of the front check: the run is queued by the route, not a pipeline."""


class ReasoningRoutes:
    def __init__(self, svc: Services, service: ReasoningService,
                 firewall: Stage | None = None) -> None:
        self.svc = svc
        self.service = service
        self.firewall = firewall  # the gateway's firewall stage (None: firewall disabled)

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
            reasoner, messages, n, budget, user = _parse(body)
            self.service.engine.reasoner(reasoner)  # an unknown reasoner: 404 first
            chat: JSON = {"model": PREFIX + reasoner, "messages": messages}
            if user is not None:
                chat["user"] = user
            headers = dict(request.headers)
            await self._front_check(request, principal, chat, headers)
            end_user, _ = end_user_id(self.svc.settings.firewall, chat, headers)
            run = await self.service.submit(principal, reasoner, messages, n, budget,
                                            end_user)
        except KeelError as exc:
            return error_response(exc)
        return ORJSONResponse(run.public(), status_code=202,
                              headers={"location": f"/v1/reasoning/runs/{run.id}"})

    async def _front_check(self, request: Request, principal: Principal, chat: JSON,
                           headers: dict[str, str]) -> None:
        """The firewall stage on the run's question, as for a chat request of the reasoner
        model; a refusal is logged like one (request log, metrics) and raised."""
        if self.firewall is None:
            return
        svc = self.svc
        ctx = RequestContext(
            id="req_" + secrets.token_hex(10), route="chat", body=chat,
            model=svc.models.get(chat["model"]), principal=principal,
            client_ip=client_ip(request, svc.trusted_proxies), headers=headers,
            forwarded_ip=forwarded_ip(request, svc.trusted_proxies))
        try:
            await self.firewall(ctx, _admitted)
        except KeelError as exc:
            ctx.error, ctx.status = exc, exc.http_status
            ctx.latency_ms = ctx.elapsed_ms()
            svc.finish(ctx)
            raise

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


def _parse(body: object) -> tuple[str, list[dict[str, object]], int | None, float | None,
                                  str | None]:
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = set(body) - {"reasoner", "question", "messages", "n", "budget_usd", "user"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))} (allowed: "
                             "reasoner, question or messages, n, budget_usd, user)")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("field 'user' (the end user's id, as in the OpenAI API) must be "
                             "a string", param="user")
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
    return reasoner, messages, body.get("n"), body.get("budget_usd"), user
