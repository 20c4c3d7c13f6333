"""Admin API for the cache: flush a namespace (optionally one tenant) and read the stats."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from keel.cache.stage import CacheStage
from keel.cache.stats import by_hour, summary
from keel.errors import NotFound
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.params import MAX_HOURS, float_param
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import check, only_fields, parse_json, require


class CacheAdminRoutes:
    def __init__(self, svc: Services, cache: CacheStage) -> None:
        self.svc = svc
        self.cache = cache

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/admin/cache/flush", self.flush, methods=["POST"],
                        summary="Flush a cache namespace (optionally one tenant)")
        r.add_api_route("/v1/admin/cache/stats", self.stats, methods=["GET"],
                        summary="Cache hit rate, guard rejections and savings")
        return r

    async def _admin(self, request: Request) -> None:
        require_admin((await authenticate(self.svc, request)).admin
                      or not self.svc.settings.auth_required)

    async def flush(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_json(await read_body(request, 65536, None))
        only_fields(body, ("namespace", "tenant"))
        namespace = require(body, "namespace", str)
        tenant = check(body, "tenant", str)
        removed = await self.cache.flush(namespace, tenant)
        if tenant and not removed:  # a typo flushes nothing: say so rather than "0 removed"
            known = await asyncio.to_thread(self.svc.keys.tenants)
            if tenant not in known and tenant != "default":
                raise NotFound(f"no tenant {tenant!r} has API keys; tenants: "
                               f"{', '.join(known[:20]) or 'none'}", param="tenant")
        return ORJSONResponse({"namespace": namespace, "tenant": tenant, "removed": removed})

    async def stats(self, request: Request) -> Response:
        await self._admin(request)
        q = request.query_params
        hours = float_param(q, "hours", 0, MAX_HOURS)
        hours = 24.0 if hours is None else hours
        await self.cache.drain()
        await self.cache.stats.flush()
        since = time.time() - hours * 3600
        tenant = q.get("tenant")
        def read(c: Connection) -> dict[str, Any]:
            return {**summary(c, since, tenant), "by_hour": by_hour(c, since, tenant)}

        out = await self.svc.db.run(read)
        return ORJSONResponse(out)
