"""HTTP surface of remediation.

- ``/svc/{service}/{path}``: the weighted reverse proxy (the service's own clients; no keel
  key: it fronts the service exactly as nginx would);
- ``GET /v1/remediation/services``: versions, weights, window stats (admin);
- ``PUT /v1/remediation/services/{service}/weights`` ``{"weights": {"production": 1}}``;
- ``POST /v1/remediation/alerts``: an Alertmanager webhook (``labels.service`` names the
  service; ``status: firing`` opens or attaches to an incident) (admin bearer key);
- ``POST /v1/remediation/incidents`` ``{"service": "checkout", "reason": "..."}``;
- ``GET /v1/remediation/incidents[?service=]``, ``GET /v1/remediation/incidents/{id}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.routes import authenticate
from keel.gateway.validation import parse_json, require

if TYPE_CHECKING:
    from keel.gateway.services import Services
    from keel.remediation.remediator import Remediator

MAX_BODY = 256 * 1024
PROXY_BODY = 8 * 1024 * 1024
PROXY_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class RemediationRoutes:
    def __init__(self, svc: Services, remediator: Remediator) -> None:
        self.svc = svc
        self.rm = remediator

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/svc/{service}/{path:path}", self.proxy, methods=PROXY_METHODS,
                        include_in_schema=False)
        r.add_api_route("/v1/remediation/services", self.services, methods=["GET"],
                        summary="Routed services: versions, weights and window statistics")
        r.add_api_route("/v1/remediation/services/{service}/weights", self.weights,
                        methods=["PUT"], summary="Set version weights (manual canary)")
        r.add_api_route("/v1/remediation/alerts", self.alerts, methods=["POST"],
                        summary="Alertmanager webhook: firing alerts open incidents")
        r.add_api_route("/v1/remediation/incidents", self.open, methods=["POST"],
                        summary="Open an incident by hand")
        r.add_api_route("/v1/remediation/incidents", self.list, methods=["GET"],
                        summary="Recent incidents")
        r.add_api_route("/v1/remediation/incidents/{incident_id}", self.show,
                        methods=["GET"], summary="One incident with its audited steps")
        return r

    async def _admin(self, request: Request) -> None:
        p = await authenticate(self.svc, request)
        require_admin(p.admin or not self.svc.settings.auth_required)

    async def proxy(self, request: Request, service: str, path: str) -> Response:
        body = await read_body(request, PROXY_BODY, None)
        status, headers, data, version = await self.rm.router.forward(
            service, request.method, "/" + path, request.url.query,
            dict(request.headers), body)
        resp = Response(data, status_code=status)
        for k, v in headers:
            resp.headers.append(k, v)
        resp.headers["x-keel-version"] = version
        return resp

    async def services(self, request: Request) -> Response:
        await self._admin(request)
        w = self.rm.cfg.detection.window_s
        return ORJSONResponse({"object": "list", "data": [
            r.public(w) for r in self.rm.router.routes.values()]})

    async def weights(self, request: Request, service: str) -> Response:
        await self._admin(request)
        route = self.rm.router.route(service)
        body = parse_json(await read_body(request, MAX_BODY, None))
        weights = require(body, "weights", dict)
        for k, v in weights.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise InvalidRequest(f"weights.{k} must be a number within 0..1", param=k)
        route.set_weights({k: float(v) for k, v in weights.items()})
        return ORJSONResponse(route.public(self.rm.cfg.detection.window_s))

    async def alerts(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_json(await read_body(request, MAX_BODY, None))
        alerts = require(body, "alerts", list)
        out: list[dict[str, Any]] = []
        for i, a in enumerate(alerts):
            if not isinstance(a, dict) or not isinstance(a.get("labels"), dict):
                raise InvalidRequest(f"alerts[{i}] needs a labels object (Alertmanager "
                                     "webhook format)", param=f"alerts[{i}]")
            service = a["labels"].get("service")
            if not isinstance(service, str):
                raise InvalidRequest(f"alerts[{i}].labels.service must name a configured "
                                     "service", param=f"alerts[{i}].labels.service")
            self.rm.router.route(service)  # 404 before anything starts
        for a in alerts:
            if (a.get("status") or body.get("status")) != "firing":
                continue
            inc, created = await self.rm.open_incident(
                a["labels"]["service"], "alertmanager",
                {"labels": a["labels"], "annotations": a.get("annotations") or {},
                 "startsAt": a.get("startsAt")})
            out.append({"incident": inc.id, "created": created})
        return ORJSONResponse({"object": "list", "data": out}, status_code=202)

    async def open(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_json(await read_body(request, MAX_BODY, None))
        unknown = sorted(set(body) - {"service", "reason"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; send "
                                 '{"service": "NAME", "reason": "..."}', param=unknown[0])
        service = require(body, "service", str)
        reason = body.get("reason") or "opened by hand"
        if not isinstance(reason, str):
            raise InvalidRequest("reason must be a string", param="reason")
        inc, created = await self.rm.open_incident(service, "api", {"reason": reason[:2000]})
        return ORJSONResponse({**inc.public(), "created": created},
                              status_code=201 if created else 200)

    async def list(self, request: Request) -> Response:
        from keel.remediation import store

        await self._admin(request)
        service = request.query_params.get("service")
        rows = await self.rm.db.run(lambda c: store.recent(c, service))
        return ORJSONResponse({"object": "list", "data": [i.public() for i in rows]})

    async def show(self, request: Request, incident_id: str) -> Response:
        await self._admin(request)
        inc, steps = await self.rm.get(incident_id)
        return ORJSONResponse({**inc.public(), "steps": steps})
