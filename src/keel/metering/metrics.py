"""Prometheus metrics, one registry per app (no global state)."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from keel.gateway.context import RequestContext

MAX_COUNTED = 10**9  # the largest token count (or USD) one request may add to a counter
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "keel_requests", "Requests served", ["route", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "keel_request_latency_seconds", "End-to-end request latency", ["route", "model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "keel_time_to_first_token_seconds", "Streaming time to first token", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.tokens = Counter(
            "keel_tokens", "Tokens metered", ["model", "tenant", "kind"], registry=r
        )
        self.cost = Counter(
            "keel_cost_usd", "Metered cost in USD", ["model", "tenant"], registry=r
        )
        self.log_dropped = Counter(
            "keel_request_log_dropped",
            "Request-log records dropped (queue full, or a record that could not be written)",
            registry=r
        )
        self._children: dict[tuple[str, str, int, str], tuple[Any, ...]] = {}
        self.local_loaded = Gauge(
            "keel_local_model_loaded", "1 while the local model is in memory", registry=r
        )

    def observe(self, ctx: RequestContext) -> None:
        key = (ctx.route, ctx.model.name, ctx.status, ctx.principal.tenant)
        children = self._children.get(key)
        if children is None:  # labels() resolution is cached: it costs µs per call
            route, m, status, t = key
            children = (
                self.requests.labels(route, m, str(status)),
                self.latency.labels(route, m),
                self.ttft.labels(m),
                self.tokens.labels(m, t, "prompt"),
                self.tokens.labels(m, t, "completion"),
                self.cost.labels(m, t),
            )
            if len(self._children) < 10_000:
                self._children[key] = children
        requests, latency, ttft, prompt, completion, cost = children
        requests.inc()
        latency.observe((ctx.latency_ms or ctx.elapsed_ms()) / 1000)
        if ctx.ttft_ms is not None:
            ttft.observe(ctx.ttft_ms / 1000)
        # Counters only go up by sane amounts: the metering stage rejects impossible usage,
        # and this guard keeps a counter from ever raising or being poisoned regardless.
        if 0 < ctx.usage.prompt_tokens <= MAX_COUNTED:
            prompt.inc(ctx.usage.prompt_tokens)
        if 0 < ctx.usage.completion_tokens <= MAX_COUNTED:
            completion.inc(ctx.usage.completion_tokens)
        if 0 < ctx.cost_usd < MAX_COUNTED and math.isfinite(ctx.cost_usd):
            cost.inc(ctx.cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
