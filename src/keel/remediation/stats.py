"""Per-version request statistics in 100 ms buckets: counts, 5xx, latencies; and the last
failing requests of a service (evidence for an incident)."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

BUCKET_S = 0.1


@dataclass
class Bucket:
    t: float  # bucket start (monotonic)
    n: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_error_at: float | None = None  # wall clock of the bucket's first 5xx


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    p95_ms: float
    first_error_at: float | None = None  # wall clock of the window's first 5xx

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def public(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4), "p95_ms": round(self.p95_ms, 2)}


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class VersionStats:
    """Sliding statistics kept for ``horizon_s`` (older buckets are dropped)."""

    def __init__(self, horizon_s: float = 180.0) -> None:
        self.horizon_s = horizon_s
        self.buckets: deque[Bucket] = deque()
        self.total = 0
        self.total_errors = 0

    def record(self, status: int, latency_ms: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        start = now - now % BUCKET_S
        if not self.buckets or self.buckets[-1].t != start:
            self.buckets.append(Bucket(start))
            while self.buckets and self.buckets[0].t < now - self.horizon_s:
                self.buckets.popleft()
        b = self.buckets[-1]
        b.n += 1
        b.latencies_ms.append(latency_ms)
        self.total += 1
        if status >= 500:
            b.errors += 1
            self.total_errors += 1
            if b.first_error_at is None:
                b.first_error_at = time.time()

    def summary(self, window_s: float, now: float | None = None) -> Summary:
        now = time.monotonic() if now is None else now
        since = now - window_s
        n = errors = 0
        lat: list[float] = []
        first: float | None = None
        for b in reversed(self.buckets):
            if b.t + BUCKET_S <= since:
                break
            n += b.n
            errors += b.errors
            lat.extend(b.latencies_ms)
            first = b.first_error_at if b.first_error_at is not None else first
        return Summary(n, errors, p95(lat), first)


@dataclass(frozen=True)
class FailedRequest:
    ts: float
    version: str
    method: str
    path: str
    status: int
    request_body: str
    response_body: str

    def public(self) -> dict[str, Any]:
        return {"ts": self.ts, "version": self.version, "method": self.method,
                "path": self.path, "status": self.status, "request_body": self.request_body,
                "response_body": self.response_body}
