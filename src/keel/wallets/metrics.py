"""Prometheus metrics of paid calls, registered on the gateway's registry (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WalletMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.payments = Counter(
            "keel_x402_payments", "Paid-call outcomes (settled, refused, failed, released)",
            ["tenant", "agent", "outcome"], registry=registry)
        self.spend = Counter(
            "keel_x402_spend_usd", "Settled x402 spend in USD", ["tenant", "agent", "payee"],
            registry=registry)
        self.refusals = Counter(
            "keel_x402_refusals", "Payments refused before signing, by reason",
            ["tenant", "reason"], registry=registry)
        self.reserve_latency = Histogram(
            "keel_x402_reserve_seconds", "Atomic budget reservation (one SQL transaction)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=registry)
        self.open_holds = Gauge(
            "keel_x402_expired_holds_released", "Holds released by the expiry sweeper",
            registry=registry)
