"""Build the keel gateway application. Nothing happens at import time."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from keel import __version__
from keel import capabilities as capabilities_mod
from keel.auth import keys as keys_mod
from keel.auth.keys import KeyStore
from keel.capability import BuildContext, Capability
from keel.components import Components
from keel.config import Settings
from keel.errors import ConfigError, InvalidRequest, KeelError, NotFound
from keel.gateway.pipeline import Pipeline, Stage
from keel.gateway.services import Services
from keel.gateway.terminal import ProviderCall
from keel.jobs.runtime import JobRuntime
from keel.metering import request_log
from keel.metering.metrics import GatewayMetrics
from keel.metering.request_log import RequestLogWriter
from keel.metering.stage import MeteringStage
from keel.ports.embedder import Embedder
from keel.ports.provider import ChatProvider
from keel.providers.registry import ModelRegistry
from keel.storage.kv import open_kv
from keel.storage.migrations import Migration, migrate
from keel.storage.private_files import private_dir
from keel.storage.sql import Database

if TYPE_CHECKING:  # the HTTP side is imported by create_app: a `keel worker` has none
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("keel")


def all_migrations(extra: Iterable[type[Capability]] = ()) -> list[Migration]:
    """The core's migrations and every installed capability's (enabled or not: turning a
    capability on later must not need a migration step)."""
    caps = capabilities_mod.available(extra)
    return [*keys_mod.MIGRATIONS, *request_log.MIGRATIONS,
            *(m for cap in caps for m in cap.migrations())]


def open_database(settings: Settings, extra: Iterable[type[Capability]] = ()) -> Database:
    """The relational store with every migration applied."""
    db = Database(settings.db_url)
    migrate(db, all_migrations(extra))
    return db


def build_services(
    settings: Settings,
    *,
    providers: dict[str, ChatProvider] | None = None,
    embedder: Embedder | None = None,
    stages: Sequence[Stage] = (),
    capabilities: Iterable[type[Capability]] = (),
    jobs: JobRuntime | None = None,
    only: Collection[str] | None = None,
) -> Services:
    """Build the core, then each enabled capability in dependency order; compose the
    pipeline once from their stages (by slot), then ``stages``, then metering.
    ``capabilities`` adds capabilities to the built-in and entry-point ones; ``jobs`` is
    the DBOS runtime to use (a ``keel worker`` passes one in worker mode); ``only`` names
    the capabilities to build (a worker builds what its queues need; default: all on)."""
    private_dir(settings.data_dir)
    available = capabilities_mod.available(capabilities)
    _check_plugin_tables(settings, available)
    db = open_database(settings, capabilities)
    models = ModelRegistry(settings, providers=providers, embedder=embedder)
    metrics = GatewayMetrics()
    writer = RequestLogWriter(db, settings.request_log,
                              on_drop=lambda n: metrics.log_dropped.inc(n))
    kv = open_kv(settings.kv)
    components = Components()
    components.put(jobs or JobRuntime(settings), owner="core")  # launches on first use
    ctx = BuildContext(settings=settings, db=db, kv=kv, models=models, metrics=metrics,
                       components=components)
    built: list[Capability] = []
    for cap in available:
        if not cap.enabled(settings):
            components.disable(cap.name, cap.how_to_enable(), cap.paths)
            continue
        if only is not None and cap.name not in only:
            components.disable(cap.name, "not built in this worker process (it builds only "
                               "what its queues need)", cap.paths)
            continue
        missing = [r for r in cap.requires if r not in {b.name for b in built}]
        if missing:
            raise ConfigError(f"the {cap.name} capability needs {', '.join(missing)}, which "
                              f"is disabled: enable it or disable {cap.name}")
        built.append(cap(ctx))
    slots = sorted((s for cap in built for s in cap.stages()), key=lambda s: s.slot)
    pipeline = Pipeline([*(s.stage for s in slots), *stages, MeteringStage()],
                        ProviderCall(models))
    svc = Services(
        settings=settings, db=db, kv=kv, keys=KeyStore(db), models=models,
        request_log=writer, metrics=metrics, pipeline=pipeline, components=components,
        capabilities=tuple(built),
        trusted_proxies=frozenset(settings.firewall.trusted_proxies),
    )
    # capabilities that call models through the pipeline (InternalClient) find the
    # services here once built, also in a `keel worker` (which installs no routes)
    components.put(svc, owner="core")
    return svc


def _check_plugin_tables(settings: Settings, available: Sequence[type[Capability]]) -> None:
    names = {c.name for c in available}
    unknown = sorted(set(settings.plugins) - names)
    if unknown:
        raise ConfigError(f"[plugins.{unknown[0]}] configures a capability that is not "
                          f"installed (installed: {', '.join(sorted(names))})")


@contextlib.asynccontextmanager
async def running(svc: Services) -> AsyncIterator[Services]:
    """Start the request log, the capabilities (in order) and the job runtime; on exit stop
    everything started, in reverse, even when a later start failed. The gateway's lifespan
    and ``keel worker`` both run their services in this."""
    svc.request_log.start()
    started: list[Capability] = []
    try:
        for cap in svc.capabilities:
            await cap.start()
            started.append(cap)
        await svc.get(JobRuntime).resume()  # durable work a crash left behind
        yield svc
    finally:
        for cap in reversed(started):
            try:
                await cap.stop()
            except Exception:
                log.exception("stopping the %s capability failed", cap.name)
        await svc.get(JobRuntime).stop()
        await svc.request_log.aclose()
        await svc.models.aclose()
        await svc.kv.aclose()
        svc.db.dispose()


def create_app(settings: Settings, *, services: Services | None = None, **kw: Any) -> FastAPI:
    from fastapi import FastAPI

    from keel.gateway.admin import AdminRoutes
    from keel.gateway.routes import OpenAIRoutes
    from keel.metering.exposition import MetricsExposition
    from keel.web.console import ConsoleRoutes

    svc = services or build_services(settings, **kw)

    # /metrics: who may scrape, and tenant/agent/payee labels only for trusted scrapes
    exposition = MetricsExposition(settings.metrics, svc.metrics.registry,
                                   before_render=lambda: svc.metrics.local_loaded.set(
                                       1 if svc.models.local_loaded else 0))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await exposition.start()
        try:
            async with running(svc):
                yield
        finally:
            await exposition.aclose()

    # FastAPI's built-in OpenTelemetry costs ~25 µs per request; opt in with server.otel.
    otel = settings.server.otel
    app = FastAPI(title="keel", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # /docs: keel.gateway.api_docs
                  telemetry={"tracing": otel, "metrics": otel, "logs": otel,
                             "operation_spans": otel})
    app.state.services = svc
    app.include_router(OpenAIRoutes(svc).router())
    app.include_router(AdminRoutes(svc).router())
    app.include_router(exposition.router())
    for cap in svc.capabilities:
        cap.install(app, svc)
    pages = [page for cap in svc.capabilities for page in cap.console_pages()]
    app.include_router(ConsoleRoutes(svc, pages).router())
    from keel.gateway.api_docs import install as install_docs

    install_docs(app)  # after every router: the document describes them all
    _install_error_handlers(app)
    return app


def _allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first)."""
    from starlette.routing import Match

    methods: set[str] = set()
    todo: list[Any] = list(app.router.routes)
    while todo:
        route = todo.pop()
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            todo.extend(inner.routes)
            continue
        allowed = getattr(route, "methods", None)
        if allowed and route.matches(request.scope)[0] != Match.NONE:
            methods.update(allowed)
    return ", ".join(sorted(methods))


def _install_error_handlers(app: FastAPI) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from keel.gateway.http import ORJSONResponse, error_response

    async def keel_error(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeelError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            svc = getattr(request.app.state, "services", None)
            off = svc.components.off_for_path(request.url.path) if svc is not None else None
            return error_response(NotFound(off or "no such endpoint; see /docs for the API"))
        if exc.status_code == 405:
            allow = _allowed_methods(app, request) or (exc.headers or {}).get("Allow", "")
            return ORJSONResponse(
                {"error": {"type": "invalid_request_error", "code": "method_not_allowed",
                           "message": f"method not allowed for this endpoint; use {allow}",
                           "param": None}},
                status_code=405, headers={"Allow": allow} if allow else None,
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
