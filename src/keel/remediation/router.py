"""Weighted traffic routing for registered services: ``/svc/NAME/...`` -> one of its versions.

Each request picks a version by smooth weighted round-robin (nginx's algorithm: exact
shares, no randomness), so a 2% canary gets 1 request in 50. Weights are read per request
from memory: a change (canary start, rollback to 0%) applies to the next request, and
requests already in flight finish on the version they started on, so nothing is dropped.
A request whose version cannot be reached (a canary that died) is retried once on the
stable version and counted as the canary's error.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from keel.errors import InvalidRequest, NotFound, UpstreamError
from keel.remediation.settings import ServiceSpec
from keel.remediation.stats import FailedRequest, VersionStats

STABLE = "stable"
CANARY = "canary"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade", "host",
                        "content-length"})
SAMPLE_CHARS = 2000


@dataclass
class Version:
    name: str
    url: str
    weight: float
    role: str  # "stable" | "canary"
    stats: VersionStats = field(default_factory=VersionStats)
    current: float = 0.0  # smooth weighted round-robin state

    def public(self, window_s: float) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "weight": self.weight, "role": self.role,
                "window": self.stats.summary(window_s).public(),
                "total_requests": self.stats.total, "total_errors": self.stats.total_errors}


class ServiceRoute:
    def __init__(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.versions: dict[str, Version] = {
            "production": Version("production", spec.production_url, 1.0, STABLE)}
        self.failures: deque[FailedRequest] = deque(maxlen=20)

    @property
    def name(self) -> str:
        return self.spec.name

    def stable(self) -> Version:
        return next(v for v in self.versions.values() if v.role == STABLE)

    def pick(self) -> Version:
        live = [v for v in self.versions.values() if v.weight > 0]
        total = sum(v.weight for v in live)
        best = live[0]
        for v in live:
            v.current += v.weight
            if v.current > best.current:
                best = v
        best.current -= total
        return best

    def add(self, name: str, url: str, weight: float = 0.0) -> Version:
        if name in self.versions:
            raise InvalidRequest(f"service {self.name!r} already has a version {name!r}")
        v = Version(name, url.rstrip("/"), weight, CANARY)
        self.versions[name] = v
        return v

    def set_weights(self, weights: dict[str, float]) -> None:
        """Set the named versions' weights (others keep theirs); the total must stay > 0."""
        for name, w in weights.items():
            if name not in self.versions:
                raise NotFound(f"service {self.name!r} has no version {name!r}; versions: "
                               f"{', '.join(self.versions)}")
            if not 0 <= w <= 1:
                raise InvalidRequest(f"weight of {name!r} must be within 0..1", param=name)
        after = {n: weights.get(n, v.weight) for n, v in self.versions.items()}
        if sum(after.values()) <= 0:
            raise InvalidRequest("at least one version needs a weight above 0")
        for name, w in after.items():
            self.versions[name].weight = w
            self.versions[name].current = 0.0

    def canary(self, name: str, share: float) -> None:
        self.set_weights({name: share, self.stable().name: 1 - share})

    def rollback(self) -> float:
        """Every canary to 0%, stable to 100%; returns when it happened (monotonic)."""
        self.set_weights({n: (1.0 if v.role == STABLE else 0.0)
                          for n, v in self.versions.items()})
        return time.monotonic()

    def promote(self, name: str) -> None:
        """``name`` becomes the stable version at 100%; the old stable one is dropped."""
        old = self.stable()
        new = self.versions[name]
        new.role, new.weight = STABLE, 1.0
        del self.versions[old.name]
        for v in self.versions.values():
            if v is not new:
                v.weight = 0.0
            v.current = 0.0

    def remove(self, name: str) -> None:
        v = self.versions.get(name)
        if v is not None and v.role != STABLE:
            del self.versions[name]

    def public(self, window_s: float) -> dict[str, Any]:
        return {"name": self.name, "versions": [v.public(window_s)
                                                for v in self.versions.values()]}


class TrafficRouter:
    """The services and one pooled aiohttp session (opened on the first proxied request)."""

    def __init__(self, specs: list[ServiceSpec], *, timeout_s: float = 30.0) -> None:
        self.routes = {s.name: ServiceRoute(s) for s in specs}
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def route(self, service: str) -> ServiceRoute:
        try:
            return self.routes[service]
        except KeyError:
            raise NotFound(f"unknown service {service!r}; configured: "
                           f"{', '.join(self.routes) or '(none)'} ([[remediation.services]])",
                           param="service") from None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=512), auto_decompress=False)
        return self._session

    async def forward(self, service: str, method: str, path: str, query: str,
                      headers: dict[str, str], body: bytes
                      ) -> tuple[int, list[tuple[str, str]], bytes, str]:
        """Send one request to a version; returns (status, headers, body, version)."""
        r = self.route(service)
        v = r.pick()
        fwd = {k: val for k, val in headers.items() if k.lower() not in HOP_BY_HOP}
        tail = path + (f"?{query}" if query else "")
        t0 = time.monotonic()
        try:
            status, out_headers, data = await self._send(v.url + tail, method, fwd, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            v.stats.record(502, (time.monotonic() - t0) * 1000)
            stable = r.stable()
            if v is stable:
                raise UpstreamError(f"service {service!r} is unreachable: "
                                    f"{type(exc).__name__}") from None
            v = stable  # the canary is gone: do not fail the user's request for it
            t0 = time.monotonic()
            status, out_headers, data = await self._send(v.url + tail, method, fwd, body)
        v.stats.record(status, (time.monotonic() - t0) * 1000)
        if status >= 500:
            r.failures.append(FailedRequest(
                time.time(), v.name, method, tail, status,
                body[:SAMPLE_CHARS].decode(errors="replace"),
                data[:SAMPLE_CHARS].decode(errors="replace")))
        return status, out_headers, data, v.name

    async def _send(self, url: str, method: str, headers: dict[str, str], body: bytes
                    ) -> tuple[int, list[tuple[str, str]], bytes]:
        async with self.session().request(method, url, headers=headers, data=body or None,
                                          allow_redirects=False) as resp:
            data = await resp.read()
            out = [(k, val) for k, val in resp.headers.items()
                   if k.lower() not in HOP_BY_HOP]
            return resp.status, out, data

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
