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
from keel.metering.exposition import MetricsExposition
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

log = logging.getLogger("keel")


def all_migrations() -> list[Migration]:
    from keel.approvals import store as approval_store  # issue 7
    from keel.cache import stats as cache_stats  # issue 4
    from keel.degrade import audit as degrade_audit
    from keel.policy import store as policy_store
    from keel.rag import catalog as rag_catalog
    from keel.tools import decision_log as tool_decisions
    from keel.wallets import tables as wallet_tables
    from keel.workflows import store as workflow_store

    return [*keys_mod.MIGRATIONS, *request_log.MIGRATIONS, *cache_stats.MIGRATIONS,
            *policy_store.MIGRATIONS, *tool_decisions.MIGRATIONS,
            *rag_catalog.MIGRATIONS, *degrade_audit.MIGRATIONS,
            *wallet_tables.MIGRATIONS,  # issue 8
            *approval_store.MIGRATIONS,  # issue 7
            *workflow_store.MIGRATIONS]


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
    private_dir(settings.data_dir)
    db = open_database(settings)
    models = ModelRegistry(settings, providers=providers, embedder=embedder)
    metrics = GatewayMetrics()
    writer = RequestLogWriter(db, settings.request_log,
                              on_drop=lambda n: metrics.log_dropped.inc(n))
    # The firewall goes first (no model, embedding or cache work for blocked prompts); other
    # capabilities add their stages after it, in front of metering: cache, degrade, rag...
    kv = open_kv(settings.kv)
    front: list[Stage] = []
    firewall = firewall_state = firewall_stage = None
    if settings.firewall.enabled:
        from keel.firewall.engine import Firewall
        from keel.firewall.stage import FirewallMetrics, FirewallStage
        from keel.firewall.state import FirewallState

        firewall_state = FirewallState(kv, settings.firewall)
        firewall = Firewall.build(settings.firewall, models.embedder())
        firewall_stage = FirewallStage(firewall, firewall_state,
                                       FirewallMetrics(metrics.registry, firewall_state))
        front.append(firewall_stage)
    # RAG objects first: the cache keys answers on the RAG index version they used.
    retriever = rag_stage = None
    if settings.rag.enabled:
        from keel.rag.retrieve import Retriever
        from keel.rag.stage import RagStage

        retriever = Retriever(db, settings.rag, settings.data_dir, models.embedder())
        rag_stage = RagStage(retriever, settings.rag)
    # --- issue 4: exact + semantic cache, right after the firewall ------------------------
    cache = None
    if settings.cache.enabled:
        from keel.cache.build import build_cache

        cache = build_cache(settings, kv, db, models.embedder_for(settings.cache.embedder),
                            metrics.registry,
                            rag_tag=rag_stage.cache_tag if rag_stage is not None else None,
                            models=models)
        front.append(cache)
    # --- issue 5: degradation ladder (model, RAG depth, caps), then RAG context ---------
    degrader = None
    if settings.degrade.active:
        from keel.degrade.service import Degrader

        degrader = Degrader(kv, db, settings.degrade, models.specs(), metrics.registry)
        front.append(degrader.stage)
    if rag_stage is not None:
        front.append(rag_stage)
    # --- issue 6: agent tool gateway (Cedar policies); tools connect in the lifespan ----
    tool_gateway = None
    if settings.tools.enabled:
        from keel.tools.gateway import ToolGateway

        tool_gateway = ToolGateway(settings.tools, db)
        if firewall_stage is not None:  # tool arguments and results meet the same firewall
            from keel.firewall.tools import ToolFirewall

            tool_gateway.scanner = ToolFirewall(firewall_stage)
    # --- end issue 6 ---------------------------------------------------------------------
    # --- issue 8: wallets, budgets and x402 payments (fails start-up without a key) ----
    wallets = fetcher = None
    if settings.wallets.enabled:
        from keel.wallets.service import WalletService
        from keel.x402.client import PaidFetcher

        wallets = WalletService(settings.wallets, db, metrics.registry)
        fetcher = PaidFetcher(wallets)
        if tool_gateway is not None:  # paid MCP tools are paid from the agent's wallet
            from keel.x402.mcp_tools import PaidToolCalls

            tool_gateway.payments = PaidToolCalls(fetcher.payer)
            if settings.wallets.sessions == "issued":  # x-keel-session: only opened ones
                tool_gateway.sessions = wallets
            if settings.wallets.cedar:  # every payment is Action::"x402:pay" for Cedar
                from keel.x402.policy import CedarPayments, policy_actions

                tool_gateway.extra_actions.extend(policy_actions(settings))
                wallets.authorizer = CedarPayments(tool_gateway)
    # --- end issue 8 ---------------------------------------------------------------------
    # --- issue 7: approvals as durable DBOS workflows (DBOS launches in the lifespan) ----
    approvals = None
    if settings.approvals.enabled:
        from keel.approvals.service import ApprovalsService

        approvals = ApprovalsService(settings, db)
        if tool_gateway is not None:  # @approval("required") tool calls become approvals
            from keel.approvals.tool_hook import ToolApprovalHook

            tool_gateway.approvals = ToolApprovalHook(approvals, settings.approvals.tool_wait_s)
        if wallets is not None:  # over-budget / @approval payments wait for a human
            from keel.approvals.payment_hook import PaymentApprovalHook

            wallets.approvals = PaymentApprovalHook(approvals, settings.approvals.tool_wait_s)
        if tool_gateway is not None and approvals.workflows is not None:  # keel:tool:T tasks
            approvals.workflows.use_tools(tool_gateway)
    # --- end issue 7 ---------------------------------------------------------------------
    pipeline = Pipeline([*front, *stages, MeteringStage()], ProviderCall(models))
    return Services(
        settings=settings, db=db, kv=kv, keys=KeyStore(db), models=models,
        request_log=writer, metrics=metrics, pipeline=pipeline,
        trusted_proxies=frozenset(settings.firewall.trusted_proxies),
        firewall=firewall, firewall_state=firewall_state, tools=tool_gateway, cache=cache,
        rag=retriever, degrade=degrader,
        wallets=wallets, x402=fetcher,  # issue 8
        approvals=approvals,  # issue 7
    )


def create_app(settings: Settings, *, services: Services | None = None, **kw: Any) -> FastAPI:
    svc = services or build_services(settings, **kw)

    # /metrics: who may scrape, and tenant/agent/payee labels only for trusted scrapes
    exposition = MetricsExposition(settings.metrics, svc.metrics.registry,
                                   before_render=lambda: svc.metrics.local_loaded.set(
                                       1 if svc.models.local_loaded else 0))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        svc.request_log.start()
        await exposition.start()
        if svc.firewall_state is not None:
            await svc.firewall_state.start()
        if svc.cache is not None:  # issue 4
            svc.cache.stats.start()
        if svc.tools is not None:  # issue 6
            await svc.tools.start()
        if svc.degrade is not None:
            await svc.degrade.start()
        if svc.wallets is not None:  # issue 8: expiry sweeper for payment holds
            svc.wallets.start()
        if svc.approvals is not None:  # issue 7: launch DBOS, recover pending waits
            await svc.approvals.start()
        try:
            yield
        finally:
            if svc.approvals is not None:  # issue 7
                await svc.approvals.stop()
            if svc.firewall_state is not None:
                await svc.firewall_state.aclose()
            if svc.cache is not None:  # issue 4
                await svc.cache.aclose()
            if svc.tools is not None:  # issue 6
                await svc.tools.aclose()
            if svc.degrade is not None:
                await svc.degrade.aclose()
            if svc.rag is not None:
                await svc.rag.aclose()
            if svc.wallets is not None:  # issue 8
                await svc.wallets.aclose()
            if svc.x402 is not None:
                await svc.x402.aclose()
            await exposition.aclose()
            await svc.request_log.aclose()
            await svc.models.aclose()
            await svc.kv.aclose()
            svc.db.dispose()

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
    if svc.firewall_state is not None:  # /v1/admin/firewall/*: bans and the allow-list
        from keel.firewall.routes import FirewallAdminRoutes

        app.include_router(FirewallAdminRoutes(svc, svc.firewall_state).router())
    if svc.cache is not None:  # issue 4: /v1/admin/cache/*
        from keel.cache.routes import CacheAdminRoutes

        app.include_router(CacheAdminRoutes(svc, svc.cache).router())
    if svc.degrade is not None:  # /v1/admin/degrade: ladder and mode at runtime
        from keel.degrade.routes import DegradeAdminRoutes

        app.include_router(DegradeAdminRoutes(svc, svc.degrade).router())
    if svc.tools is not None:  # issue 6: /mcp and /v1/tools
        from keel.tools.routes import install as install_tools

        install_tools(app, svc)
    if svc.x402 is not None:  # issue 8: /v1/fetch and /v1/wallet
        from keel.x402.routes import PaymentRoutes

        app.include_router(PaymentRoutes(svc, svc.x402).router())

    if svc.approvals is not None:  # issue 7: /v1/approvals, /approvals/r/{ref}, Slack
        from keel.approvals.routes import ApprovalRoutes

        app.include_router(ApprovalRoutes(svc, svc.approvals).router())
        if svc.approvals.workflows is not None:  # /v1/workflows, /v1/executions
            from keel.workflows.routes import WorkflowRoutes

            app.include_router(WorkflowRoutes(svc, svc.approvals.workflows).router())

    from keel.web.console import ConsoleRoutes

    app.include_router(ConsoleRoutes(svc).router())
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
    async def keel_error(_r: Request, exc: Exception) -> Response:
        assert isinstance(exc, KeelError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFound("no such endpoint; see /docs for the API"))
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
