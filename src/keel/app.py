"""Build the keel gateway application. Nothing happens at import time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from keel import __version__
from keel.auth import keys as keys_mod
from keel.auth.keys import KeyStore
from keel.config import Settings
from keel.errors import InvalidRequest, KeelError, NotFound
from keel.gateway.admin import AdminRoutes
from keel.gateway.http import ORJSONResponse, error_response
from keel.gateway.pipeline import Pipeline, Stage
from keel.gateway.routes import OpenAIRoutes
from keel.gateway.services import Services
from keel.gateway.terminal import ProviderCall
from keel.metering import request_log
from keel.metering.metrics import GatewayMetrics
from keel.metering.request_log import RequestLogWriter
from keel.metering.stage import MeteringStage
from keel.ports.embedder import Embedder
from keel.ports.provider import ChatProvider
from keel.providers.registry import ModelRegistry
from keel.storage.kv import open_kv
from keel.storage.migrations import Migration, migrate
from keel.storage.sql import Database

log = logging.getLogger("keel")


def all_migrations() -> list[Migration]:
    return [*keys_mod.MIGRATIONS, *request_log.MIGRATIONS]


def open_database(settings: Settings) -> Database:
    """The relational store with every migration applied."""
    db = Database(settings.db_url)
    migrate(db, all_migrations())
    return db


def build_services(
    settings: Settings,
    *,
    providers: dict[str, ChatProvider] | None = None,
    embedder: Embedder | None = None,
    stages: Sequence[Stage] = (),
) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings)
    models = ModelRegistry(settings, providers=providers, embedder=embedder)
    metrics = GatewayMetrics()
    writer = RequestLogWriter(db, settings.request_log,
                              on_drop=lambda n: metrics.log_dropped.inc(n))
    # The firewall goes first (no model, embedding or cache work for blocked prompts); other
    # capabilities add their stages after it, in front of metering: cache, degrade, rag...
    kv = open_kv(settings.kv)
    front: list[Stage] = []
    firewall = firewall_state = None
    if settings.firewall.enabled:
        from keel.firewall.engine import Firewall
        from keel.firewall.stage import FirewallMetrics, FirewallStage
        from keel.firewall.state import FirewallState

        firewall_state = FirewallState(kv, settings.firewall)
        firewall = Firewall.build(settings.firewall, models.embedder())
        front.append(FirewallStage(firewall, firewall_state,
                                   FirewallMetrics(metrics.registry, firewall_state)))
    pipeline = Pipeline([*front, *stages, MeteringStage()], ProviderCall(models))
    return Services(
        settings=settings, db=db, kv=kv, keys=KeyStore(db), models=models,
        request_log=writer, metrics=metrics, pipeline=pipeline,
        trusted_proxies=frozenset(settings.firewall.trusted_proxies),
        firewall=firewall, firewall_state=firewall_state,
    )


def create_app(settings: Settings, *, services: Services | None = None, **kw: Any) -> FastAPI:
    svc = services or build_services(settings, **kw)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.request_log.start()
        if svc.firewall_state is not None:
            await svc.firewall_state.start()
        try:
            yield
        finally:
            if svc.firewall_state is not None:
                await svc.firewall_state.aclose()
            await svc.request_log.aclose()
            await svc.models.aclose()
            await svc.kv.aclose()
            svc.db.dispose()

    # FastAPI's built-in OpenTelemetry costs ~25 µs per request; opt in with server.otel.
    otel = settings.server.otel
    app = FastAPI(title="keel", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None,
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel,
                             "operation_spans": otel})
    app.state.services = svc
    app.include_router(OpenAIRoutes(svc).router())
    app.include_router(AdminRoutes(svc).router())

    from keel.web.console import ConsoleRoutes

    app.include_router(ConsoleRoutes(svc).router())
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def keel_error(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeelError)
        return error_response(exc)

    async def http_error(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFound("no such endpoint; see /docs for the API"))
        if exc.status_code == 405:
            return ORJSONResponse(
                {"error": {"type": "invalid_request_error", "code": "method_not_allowed",
                           "message": "method not allowed for this endpoint", "param": None}},
                status_code=405,
            )
        return ORJSONResponse(
            {"error": {"type": "invalid_request_error", "code": f"http_{exc.status_code}",
                       "message": str(exc.detail), "param": None}},
            status_code=exc.status_code,
        )

    async def validation_error(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(InvalidRequest(f"{where}: {first.get('msg', 'invalid')}"))

    async def unexpected(_r: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return error_response(KeelError("internal error; see the gateway log"))

    app.add_exception_handler(KeelError, keel_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
