"""``/metrics``: who may scrape it, and what an untrusted scrape is shown.

Series are recorded with their real tenant, agent and payee labels (one registry per app);
identity is removed at render time, so every capability's metrics -- present and future --
are covered by the same rule (see :mod:`keel.metering.settings`):

* a *trusted* scrape (the ``[metrics] token``, or the separate listener when no token is
  set) sees the labels listed in ``identity_labels``;
* an *untrusted* scrape (the API port without a token configured) sees none: each identity
  label's value becomes ``"*"`` and the series that then coincide are merged (counters,
  histograms and summaries summed; gauges, which cannot be summed, keep only their
  series that had no identity to hide).

With a token configured an untrusted scrape is refused (401). With a separate listener the
API port does not serve ``/metrics`` at all (404).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import AuthenticationError, ConfigError, KeelError, NotFound
from keel.gateway.http import error_response
from keel.metering.settings import MetricsSettings

log = logging.getLogger("keel.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HIDDEN = "*"
# label name -> the kind of identity it carries (degrade's "scope" is a tenant or "*")
IDENTITY = {"tenant": "tenant", "scope": "tenant", "agent": "agent", "payee": "payee"}


class RedactedView:
    """A registry as seen with the identity labels of ``hide`` folded into ``"*"``."""

    def __init__(self, registry: CollectorRegistry, hide: Iterable[str]) -> None:
        self.registry = registry
        self.hide = frozenset(name for name, kind in IDENTITY.items() if kind in set(hide))

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if not self.hide:
                yield metric
                continue
            out = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
            for s in metric.samples:
                labels = dict(s.labels)
                changed = False
                for name in self.hide & labels.keys():
                    if labels[name] != HIDDEN:
                        labels[name] = HIDDEN
                        changed = True
                if changed and metric.type in ("gauge", "info", "stateset", "unknown"):
                    continue  # a per-tenant level or value has no meaningful sum
                key = (s.name, tuple(sorted(labels.items())))
                prev = merged.get(key)
                if prev is None:
                    value = s.value
                elif s.name.endswith("_created"):
                    value = min(prev.value, s.value)
                else:
                    value = prev.value + s.value
                merged[key] = Sample(s.name, labels, value, s.timestamp)
            out.samples = list(merged.values())
            yield out


class MetricsExposition:
    """Serves ``/metrics`` on the API port and, optionally, on a listener of its own."""

    def __init__(self, settings: MetricsSettings, registry: CollectorRegistry,
                 before_render: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.registry = registry
        self.before_render = before_render
        self._runner: Any = None

    # -- access -----------------------------------------------------------------------------

    def _trusted(self, authorization: str | None, own_listener: bool) -> bool:
        """True for a trusted scrape, False for an untrusted one; raises when refused."""
        token = self.settings.token
        if token is None:
            return own_listener
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.get_secret_value().encode()):
            raise AuthenticationError(
                "/metrics needs 'Authorization: Bearer <token>' ([metrics] token)")
        return True

    def render(self, trusted: bool) -> bytes:
        self.before_render()
        every = ("tenant", "agent", "payee")
        shown = set(self.settings.identity_labels) if trusted else set()
        return generate_latest(RedactedView(self.registry, [k for k in every if k not in shown]))

    def _answer(self, authorization: str | None, own_listener: bool) -> tuple[int, bytes, str]:
        try:
            if self.settings.port and not own_listener:
                raise NotFound("no such endpoint; see /docs for the API")
            body = self.render(self._trusted(authorization, own_listener))
        except KeelError as exc:
            resp = error_response(exc)
            return resp.status_code, bytes(resp.body), "application/json"
        return 200, body, CONTENT_TYPE

    # -- the API port ------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/metrics", self.api_metrics, methods=["GET"], summary="Prometheus",
                        include_in_schema=not self.settings.port)
        return r

    async def api_metrics(self, request: Request) -> Response:
        status, body, media = self._answer(request.headers.get("authorization"), False)
        headers = {"www-authenticate": "Bearer"} if status == 401 else None
        return Response(body, status_code=status, media_type=media, headers=headers)

    # -- the separate listener ----------------------------------------------------------------

    async def start(self) -> None:
        """Open ``[metrics] host:port`` when configured (aiohttp: no signal handlers, and
        SO_REUSEPORT so every worker process of ``keel serve -w N`` can bind it)."""
        s = self.settings
        if not s.port:
            return
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            status, body, media = self._answer(request.headers.get("authorization"), True)
            headers = {"www-authenticate": "Bearer"} if status == 401 else {}
            return web.Response(body=body, status=status, headers={
                **headers, "content-type": media})

        app = web.Application()
        app.router.add_get("/metrics", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, s.host, s.port, reuse_port=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot serve metrics on {s.host}:{s.port} ([metrics] host and "
                              f"port): {exc.strerror or exc}") from None
        self._runner = runner
        if s.token is None and s.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics on %s:%d have no token: anyone who can reach it sees tenant "
                        "names and spend; set [metrics] token", s.host, s.port)

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
