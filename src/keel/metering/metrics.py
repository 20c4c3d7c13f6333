"""Prometheus metrics, one registry per app (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from keel.gateway.context import RequestContext

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
            "keel_request_log_dropped", "Request-log records dropped (queue full)", registry=r
        )
        self.local_loaded = Gauge(
            "keel_local_model_loaded", "1 while the local model is in memory", registry=r
        )

    def observe(self, ctx: RequestContext) -> None:
        m = ctx.model.name
        self.requests.labels(ctx.route, m, str(ctx.status)).inc()
        self.latency.labels(ctx.route, m).observe((ctx.latency_ms or ctx.elapsed_ms()) / 1000)
        if ctx.ttft_ms is not None:
            self.ttft.labels(m).observe(ctx.ttft_ms / 1000)
        t = ctx.principal.tenant
        if ctx.usage.prompt_tokens:
            self.tokens.labels(m, t, "prompt").inc(ctx.usage.prompt_tokens)
        if ctx.usage.completion_tokens:
            self.tokens.labels(m, t, "completion").inc(ctx.usage.completion_tokens)
        if ctx.cost_usd:
            self.cost.labels(m, t).inc(ctx.cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
