"""HTTP surface of workflows, shaped after Step Functions' API:

``PUT /v1/workflows/{name}`` (the ASL JSON as the body; a new version when it changed),
``GET /v1/workflows[/{name}]``, ``POST /v1/workflows/{name}/executions``
(StartExecution: 201 + ``Location``), ``GET /v1/executions[/{id}]`` (list, Describe),
``POST /v1/executions/{id}/stop`` and ``GET /v1/executions/{id}/history``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.routes import authenticate
from keel.gateway.validation import parse_json
from keel.workflows.service import WorkflowService, payload_too_large

if TYPE_CHECKING:
    from keel.gateway.services import Services


class WorkflowRoutes:
    def __init__(self, svc: Services, workflows: WorkflowService) -> None:
        self.svc = svc
        self.wf = workflows

    def router(self) -> APIRouter:
        r = APIRouter()
        add = r.add_api_route
        add("/v1/workflows", self.list_workflows, methods=["GET"],
            summary="List registered workflows")
        add("/v1/workflows/{name}", self.put, methods=["PUT"],
            summary="Register a workflow (ASL JSON body; admin key)")
        add("/v1/workflows/{name}", self.get_workflow, methods=["GET"],
            summary="A workflow's definition (?version=N)")
        add("/v1/workflows/{name}/executions", self.start, methods=["POST"],
            summary="Start an execution: {\"input\": {...}}", status_code=201)
        add("/v1/executions", self.list_executions, methods=["GET"],
            summary="List executions (?workflow=&status=&limit=)")
        add("/v1/executions/{execution_id}", self.describe, methods=["GET"],
            summary="Describe an execution")
        add("/v1/executions/{execution_id}/stop", self.stop, methods=["POST"],
            summary="Stop an execution: {\"error\": ..., \"cause\": ...}")
        add("/v1/executions/{execution_id}/history", self.history, methods=["GET"],
            summary="An execution's history events")
        add("/v1/tasks/success", self.task_success, methods=["POST"],
            summary="SendTaskSuccess: {\"taskToken\": ..., \"output\": {...}}")
        add("/v1/tasks/failure", self.task_failure, methods=["POST"],
            summary="SendTaskFailure: {\"taskToken\": ..., \"error\": ..., \"cause\": ...}")
        return r

    async def _task_body(self, request: Request, allowed: set[str]) -> tuple[Any, dict[str, Any]]:
        p = await authenticate(self.svc, request)
        body = parse_json(await read_body(request, self.wf.cfg.max_payload_bytes + 4096,
                                         "workflows.max_payload_bytes"))
        if not isinstance(body, dict) or not isinstance(body.get("taskToken"), str):
            raise InvalidRequest('send {"taskToken": "..."} (the $$.Task.Token the task got)',
                                 param="taskToken")
        unknown = sorted(set(body) - allowed - {"taskToken"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}", param=unknown[0])
        return p, body

    async def task_success(self, request: Request) -> Response:
        """Complete a waiting ``.waitForTaskToken`` task with its output. The token is a
        one-time capability, like the decision link that carries it."""
        from keel.approvals.engine import Decider

        p, body = await self._task_body(request, {"output"})
        who = Decider(actor=f"key:{p.key_id}", via="api")
        a = await self.wf.approvals.engine.decide("approve", who, ref=body["taskToken"],
                                                  output=body.get("output"))
        return ORJSONResponse({"approval_id": a.id, "status": a.status})

    async def task_failure(self, request: Request) -> Response:
        from keel.approvals.engine import Decider

        p, body = await self._task_body(request, {"error", "cause"})
        for k in ("error", "cause"):
            if body.get(k) is not None and not isinstance(body[k], str):
                raise InvalidRequest(f"{k} must be a string", param=k)
        who = Decider(actor=f"key:{p.key_id}", via="api")
        a = await self.wf.approvals.engine.decide(
            "deny", who, ref=body["taskToken"], error=body.get("error") or "States.TaskFailed",
            cause=body.get("cause"), note=body.get("cause"))
        return ORJSONResponse({"approval_id": a.id, "status": a.status})

    async def _admin(self, request: Request) -> Any:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        return p

    async def put(self, request: Request, name: str) -> Response:
        p = await self._admin(request)
        raw = await read_body(request, self.wf.cfg.max_definition_bytes,
                              "workflows.max_definition_bytes")
        out = await self.wf.put(name, raw, by=f"key:{p.key_id}")
        return ORJSONResponse(out)

    async def list_workflows(self, request: Request) -> Response:
        await authenticate(self.svc, request)
        return ORJSONResponse({"object": "list", "data": await self.wf.definitions()})

    async def get_workflow(self, request: Request, name: str) -> Response:
        await authenticate(self.svc, request)
        version = _int(request.query_params.get("version"), "version")
        return ORJSONResponse(await self.wf.get(name, version))

    async def start(self, request: Request, name: str) -> Response:
        p = await authenticate(self.svc, request)
        limit = self.wf.cfg.max_payload_bytes
        try:
            raw = await read_body(request, limit + 4096, "workflows.max_payload_bytes")
        except Exception as exc:
            size = int(request.headers.get("content-length") or 0) or limit + 4096
            raise payload_too_large("the request body", size, limit) from exc
        body = parse_json(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise InvalidRequest('send {"input": {...}} (a JSON object)')
        unknown = sorted(set(body) - {"input", "version"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; send "
                                 '{"input": {...}} and optionally "version"',
                                 param=unknown[0])
        version = body.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise InvalidRequest("version must be an integer", param="version")
        ex = await self.wf.start(name, body.get("input", {}), p, version)
        out = ex.public()
        out["url"] = f"/v1/executions/{ex.id}"
        return ORJSONResponse(out, status_code=201, headers={"location": out["url"]})

    async def list_executions(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        q = request.query_params
        limit = _int(q.get("limit"), "limit") or 100
        rows = await self.wf.executions(p, workflow=q.get("workflow") or None,
                                        status=q.get("status") or None,
                                        limit=max(1, min(limit, 1000)))
        return ORJSONResponse({"object": "list", "data": [e.public() for e in rows]})

    async def describe(self, request: Request, execution_id: str) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse((await self.wf.describe(execution_id, p)).public())

    async def stop(self, request: Request, execution_id: str) -> Response:
        p = await authenticate(self.svc, request)
        raw = await read_body(request, 65536, None)
        body = parse_json(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise InvalidRequest('send {"error": "...", "cause": "..."} or no body')
        error, cause = body.get("error"), body.get("cause")
        for k, v in (("error", error), ("cause", cause)):
            if v is not None and not isinstance(v, str):
                raise InvalidRequest(f"{k} must be a string", param=k)
        ex = await self.wf.stop(execution_id, p, error, cause)
        return ORJSONResponse(ex.public())

    async def history(self, request: Request, execution_id: str) -> Response:
        p = await authenticate(self.svc, request)
        events = await self.wf.history(execution_id, p)
        return ORJSONResponse({"object": "list", "data": events})


def _int(raw: str | None, name: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None


__all__ = ["WorkflowRoutes"]
