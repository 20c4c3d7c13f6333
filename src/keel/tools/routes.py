"""HTTP surface of the tool gateway: ``/mcp``, ``POST /v1/tools/{name}``, tool listing and
the decision log for admins."""

from __future__ import annotations

import time
from typing import Any

import mcp_types as types
from fastapi import APIRouter, FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keel.errors import InvalidRequest, KeelError
from keel.gateway.http import ORJSONResponse, error_response, read_body, require_admin
from keel.gateway.params import MAX_HOURS, choice_param, float_param, int_param
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import check, parse_json
from keel.tools.decision_log import DecisionFilter, query_decisions
from keel.tools.gateway import ToolGateway
from keel.tools.mcp_endpoint import SESSION_HEADER, McpEndpoint
from keel.tools.ports import PAYMENT_RECEIPT_META, payment_headers


def result_json(result: types.CallToolResult) -> dict[str, Any]:
    out: dict[str, Any] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    out.pop("_meta", None)
    return out


class ToolRoutes:
    def __init__(self, svc: Services, gateway: ToolGateway) -> None:
        self.svc = svc
        self.gateway = gateway

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/tools", self.list_tools, methods=["GET"],
                        summary="List every tool served (each call is still decided by policy)")
        r.add_api_route("/v1/tools/{name}", self.call_tool, methods=["POST"],
                        summary="Call a tool: body {\"arguments\": {...}}; Cedar decides first")
        r.add_api_route("/v1/admin/tool-decisions", self.decisions, methods=["GET"],
                        summary="The tool decision log (admin)")
        return r

    async def list_tools(self, request: Request) -> Response:
        await authenticate(self.svc, request)
        return ORJSONResponse({"object": "list", "data": [
            {"name": s.name, "server": s.server, "description": s.description,
             "input_schema": s.input_schema} for s, _ in self.gateway.tools.values()]})

    async def call_tool(self, request: Request, name: str) -> Response:
        try:
            principal = await authenticate(self.svc, request)
            body = parse_json(await read_body(request, self.svc.settings.server.max_body_bytes))
            arguments = check(body, "arguments", dict)
            unknown = sorted(set(body) - {"arguments"})
            if unknown:
                raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}: send "
                                     "{\"arguments\": {...}}", param=unknown[0])
            self.gateway.spec(name)
            session = request.headers.get(SESSION_HEADER, "")
            decision_id, decision, result = await self.gateway.call(
                principal, name, arguments or {}, session)
        except KeelError as exc:
            return error_response(exc)
        paid = (result.meta or {}).get(PAYMENT_RECEIPT_META)
        return ORJSONResponse({"id": decision_id, "tool": name, "decision": decision.outcome,
                               "policy_ids": list(decision.policy_ids),
                               "result": result_json(result), "payment": paid},
                              headers=payment_headers(paid))

    async def decisions(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        q = request.query_params
        hours = float_param(q, "hours", 0, MAX_HOURS)
        f = DecisionFilter(
            tenant=q.get("tenant"),
            decision=choice_param(q, "decision", ("allow", "deny", "approval")),
            since=time.time() - hours * 3600 if hours is not None else None,
            limit=int_param(q, "limit", 100, 1, 1000))
        await self.gateway.log.flush()
        rows = await self.svc.db.run(lambda c: query_decisions(c, f))
        return ORJSONResponse({"object": "list", "data": rows})


def install(app: FastAPI, svc: Services, gateway: ToolGateway) -> None:
    """Mount ``/mcp`` and the tool routes."""
    app.include_router(ToolRoutes(svc, gateway).router())
    # A plain Route (not a Mount): "/mcp" itself must match without a slash redirect. First
    # in the table: matching it after every included router cost ~0.2 ms per MCP message.
    app.router.routes.insert(0, Route("/mcp", endpoint=McpEndpoint(svc, gateway)))
