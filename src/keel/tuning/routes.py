"""HTTP: ``POST /v1/feedback`` for any key (its own tenant's requests), listing feedback,
and the admin API for versions, promotion and rollback."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.params import choice_param, float_param, int_param
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import parse_json
from keel.tuning.feedback import FeedbackFilter, FeedbackService, list_feedback, parse_feedback
from keel.tuning.loop import TuningLoop
from keel.tuning.registry import VersionRegistry


class TuningRoutes:
    def __init__(self, svc: Services, feedback: FeedbackService, registry: VersionRegistry,
                 loop: TuningLoop) -> None:
        self.svc = svc
        self.feedback = feedback
        self.registry = registry
        self.loop = loop

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/feedback", self.post_feedback, methods=["POST"],
                        summary="Rate an answer (and correct it)")
        r.add_api_route("/v1/feedback", self.get_feedback, methods=["GET"],
                        summary="List feedback (own tenant; all for admin keys)")
        r.add_api_route("/v1/admin/tuning/versions", self.versions, methods=["GET"])
        r.add_api_route("/v1/admin/tuning/versions/{version_id:path}/promote", self.promote,
                        methods=["POST"])
        r.add_api_route("/v1/admin/tuning/models/{model:path}/rollback", self.rollback,
                        methods=["POST"])
        return r

    async def post_feedback(self, request: Request) -> Response:
        principal = await authenticate(self.svc, request)
        t = self.feedback.settings
        limit = 4 * (t.max_correction_chars + t.max_comment_chars) + 4096
        fb = parse_feedback(parse_json(await read_body(
            request, limit, "tuning.max_correction_chars and tuning.max_comment_chars")), t)
        out = await self.feedback.submit(principal, fb)  # a correction may start a round
        return ORJSONResponse(out, status_code=201 if out["created"] else 200)

    async def get_feedback(self, request: Request) -> Response:
        principal = await authenticate(self.svc, request)
        q = request.query_params
        tenant = q.get("tenant") if principal.admin or not self.svc.settings.auth_required \
            else principal.tenant
        rating = choice_param(q, "rating", ("up", "down"))
        trainable = choice_param(q, "trainable", ("true", "false"))
        f = FeedbackFilter(
            tenant=tenant, model=q.get("model"),
            rating=None if rating is None else (1 if rating == "up" else -1),
            trainable=None if trainable is None else trainable == "true",
            since=float_param(q, "since", 0, 1e11), limit=int_param(q, "limit", 100, 1, 1000))
        rows = await self.svc.db.run(lambda c: list_feedback(c, f))
        return ORJSONResponse({"object": "list", "data": rows})

    async def _admin(self, request: Request) -> None:
        require_admin((await authenticate(self.svc, request)).admin
                      or not self.svc.settings.auth_required)

    async def versions(self, request: Request) -> Response:
        await self._admin(request)
        data = [v.to_json() for v in await self.registry.list(request.query_params.get("model"))]
        return ORJSONResponse({"object": "list", "data": data})

    async def promote(self, request: Request, version_id: str) -> Response:
        await self._admin(request)
        force = choice_param(request.query_params, "force", ("true", "false")) == "true"
        v = await self.registry.promote(version_id, force=force)
        return ORJSONResponse(v.to_json())

    async def rollback(self, request: Request, model: str) -> Response:
        await self._admin(request)
        if model not in self.svc.models:
            raise InvalidRequest(f"model {model!r} is not in the model table", param="model")
        v = await self.registry.rollback(model)
        return ORJSONResponse({"model": model, "serving": v.id if v else "base"})
