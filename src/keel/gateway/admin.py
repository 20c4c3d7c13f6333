"""Operational endpoints: health and the admin API (admin keys only); ``/metrics`` is
served by :mod:`keel.metering.exposition`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.auth.keys import tenant_problem
from keel.errors import InvalidRequest, NotFound
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.params import choice_param, float_param, int_param
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import check, parse_json, require
from keel.metering.request_log import LogFilter, get_request, query_requests


class AdminRoutes:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/healthz", self.healthz, methods=["GET"], summary="Liveness")
        r.add_api_route("/v1/admin/keys", self.list_keys, methods=["GET"])
        r.add_api_route("/v1/admin/keys", self.create_key, methods=["POST"])
        r.add_api_route("/v1/admin/keys/{key_id}", self.revoke_key, methods=["DELETE"])
        r.add_api_route("/v1/admin/requests", self.list_requests, methods=["GET"])
        r.add_api_route("/v1/admin/requests/{request_id}", self.get_request, methods=["GET"])
        return r

    async def healthz(self) -> Response:
        return ORJSONResponse({"status": "ok", "time": time.time(),
                               "local_model_loaded": self.svc.models.local_loaded})

    async def _admin(self, request: Request) -> None:
        require_admin((await authenticate(self.svc, request)).admin
                      or not self.svc.settings.auth_required)

    async def list_keys(self, request: Request) -> Response:
        await self._admin(request)
        keys = self.svc.keys.list(tenant=request.query_params.get("tenant"))
        return ORJSONResponse({"object": "list", "data": [k.__dict__ for k in keys]})

    async def create_key(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_json(await read_body(request, 65536, None))
        tenant = require(body, "tenant", str)
        problem = tenant_problem(tenant)
        if problem is not None:
            raise InvalidRequest(f"field 'tenant': {problem}", param="tenant")
        new = self.svc.keys.create(
            tenant, agent=check(body, "agent", str), admin=bool(check(body, "admin", bool)),
            name=check(body, "name", str),
        )
        return ORJSONResponse({**new.info.__dict__, "key": new.secret}, status_code=201)

    async def revoke_key(self, request: Request, key_id: str) -> Response:
        await self._admin(request)
        self.svc.keys.revoke(key_id)
        return ORJSONResponse({"id": key_id, "revoked": True})

    async def list_requests(self, request: Request) -> Response:
        await self._admin(request)
        q = request.query_params
        f = LogFilter(tenant=q.get("tenant"), model=q.get("model"),
                      status=choice_param(q, "status", ("ok", "error")),
                      since=float_param(q, "since", 0, 1e11),
                      limit=int_param(q, "limit", 100, 1, 1000),
                      offset=int_param(q, "offset", 0, 0, 10**9))
        await self.svc.request_log.flush()
        rows: list[dict[str, Any]] = await self.svc.db.run(lambda c: query_requests(c, f))
        return ORJSONResponse({"object": "list", "data": rows})

    async def get_request(self, request: Request, request_id: str) -> Response:
        await self._admin(request)
        await self.svc.request_log.flush()
        row = await self.svc.db.run(lambda c: get_request(c, request_id))
        if row is None:
            raise NotFound(f"no request with id {request_id!r} in the request log")
        return ORJSONResponse(row)
