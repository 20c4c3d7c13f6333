"""The services one gateway app is built from (no globals: tests build fresh ones)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keel.auth.keys import KeyStore
from keel.config import Settings
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Pipeline
from keel.metering.metrics import GatewayMetrics
from keel.metering.request_log import RequestLogWriter
from keel.ports.kv import KV
from keel.providers.registry import ModelRegistry
from keel.storage.sql import Database

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService  # issue 7
    from keel.cache.stage import CacheStage  # issue 4
    from keel.degrade.service import Degrader
    from keel.firewall.engine import Firewall
    from keel.firewall.state import FirewallState
    from keel.rag.retrieve import Retriever
    from keel.tools.gateway import ToolGateway
    from keel.wallets.service import WalletService
    from keel.x402.client import PaidFetcher


@dataclass
class Services:
    settings: Settings
    db: Database
    kv: KV
    keys: KeyStore
    models: ModelRegistry
    request_log: RequestLogWriter
    metrics: GatewayMetrics
    pipeline: Pipeline
    trusted_proxies: frozenset[str] = field(default_factory=frozenset)
    firewall: Firewall | None = None
    firewall_state: FirewallState | None = None
    cache: CacheStage | None = None  # issue 4: exact + semantic cache
    tools: ToolGateway | None = None  # issue 6: agent tool gateway (Cedar)
    rag: Retriever | None = None  # RAG retrieval (issue 5)
    degrade: Degrader | None = None  # degradation ladder + spend breaker (issue 5)
    wallets: WalletService | None = None  # issue 8: wallets, budgets, ledger
    x402: PaidFetcher | None = None  # issue 8: paid fetch following HTTP 402
    approvals: ApprovalsService | None = None  # issue 7: durable approvals (DBOS)

    def finish(self, ctx: RequestContext) -> None:
        """Record a completed (or failed) request: metrics now, the log in the background."""
        self.metrics.observe(ctx)
        self.request_log.submit(ctx)
