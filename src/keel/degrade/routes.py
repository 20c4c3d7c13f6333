"""Admin API of the degradation ladder (admin keys only), like a feature-flag service.

- ``GET /v1/admin/degrade``: mode, override, the ladder in force and where it comes from,
  alarm values;
- ``PUT /v1/admin/degrade/ladder`` ``{"levels": [...], "alarms": [...]}``: replace levels
  and thresholds at runtime (validated against the model table, audited, stored in the KV
  store: every replica switches within ``refresh_s``); ``DELETE`` returns to keel.toml's
  (or the default) ladder;
- ``PUT /v1/admin/degrade/mode`` ``{"mode": "shallow", "duration_s": 3600}``: a manual
  override (``duration_s`` optional); ``DELETE`` hands the level back to the breaker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest, WrongType
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.routes import authenticate
from keel.gateway.validation import parse_json, require

if TYPE_CHECKING:
    from keel.degrade.service import Degrader
    from keel.gateway.services import Services

MAX_BODY = 64 * 1024


class DegradeAdminRoutes:
    def __init__(self, svc: Services, degrader: Degrader) -> None:
        self.svc = svc
        self.dg = degrader

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/admin/degrade", self.status, methods=["GET"],
                        summary="Degradation mode, override, ladder and alarm values")
        r.add_api_route("/v1/admin/degrade/ladder", self.set_ladder, methods=["PUT"],
                        summary="Replace the ladder's levels and alarms at runtime")
        r.add_api_route("/v1/admin/degrade/ladder", self.reset_ladder, methods=["DELETE"],
                        summary="Back to the configured (or default) ladder")
        r.add_api_route("/v1/admin/degrade/mode", self.set_mode, methods=["PUT"],
                        summary="Pin every replica to a level (optionally for a while)")
        r.add_api_route("/v1/admin/degrade/mode", self.auto, methods=["DELETE"],
                        summary="Drop the override: the breaker decides again")
        return r

    async def _actor(self, request: Request) -> str:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        return f"api:key:{p.key_id}"

    async def status(self, request: Request) -> Response:
        await self._actor(request)
        return ORJSONResponse(self.dg.status())

    async def set_ladder(self, request: Request) -> Response:
        actor = await self._actor(request)
        body = parse_json(await read_body(request, MAX_BODY, None))
        await self.dg.set_config(body, actor)
        return ORJSONResponse(self.dg.status())

    async def reset_ladder(self, request: Request) -> Response:
        actor = await self._actor(request)
        await self.dg.reset_config(actor)
        return ORJSONResponse(self.dg.status())

    async def set_mode(self, request: Request) -> Response:
        actor = await self._actor(request)
        body = parse_json(await read_body(request, MAX_BODY, None))
        unknown = sorted(set(body) - {"mode", "duration_s"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; send "
                                 '{"mode": "shallow", "duration_s": 3600}', param=unknown[0])
        mode = require(body, "mode", str)
        duration = body.get("duration_s")
        if duration is not None and (isinstance(duration, bool)
                                     or not isinstance(duration, int | float)):
            raise WrongType("'duration_s' must be a number of seconds", param="duration_s")
        if duration is not None and not 0 < duration <= 30 * 86_400:
            raise InvalidRequest("'duration_s' must be in (0, 2592000] (30 days); omit it to "
                                 "pin until DELETE /v1/admin/degrade/mode", param="duration_s")
        await self.dg.set_mode(mode, None if duration is None else float(duration), actor)
        return ORJSONResponse(self.dg.status())

    async def auto(self, request: Request) -> Response:
        actor = await self._actor(request)
        await self.dg.set_auto(actor)
        return ORJSONResponse(self.dg.status())
