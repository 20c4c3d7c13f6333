"""The services one gateway app is built from (no globals: tests build fresh ones).

The core (database, KV store, keys, models, request log, metrics, pipeline) is fixed;
everything a capability built is looked up by type with :meth:`Services.find` /
:meth:`Services.get`, so adding a capability never adds a field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from keel.auth.keys import KeyStore
from keel.components import Components
from keel.config import Settings
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Pipeline
from keel.metering.metrics import GatewayMetrics
from keel.metering.request_log import RequestLogWriter
from keel.ports.kv import KV
from keel.providers.registry import ModelRegistry
from keel.storage.sql import Database

if TYPE_CHECKING:
    from keel.capability import Capability

T = TypeVar("T")


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
    components: Components = field(default_factory=Components)
    capabilities: tuple[Capability, ...] = ()  # the enabled ones, in start order
    trusted_proxies: frozenset[str] = field(default_factory=frozenset)

    def find(self, kind: type[T]) -> T | None:
        """The component of this type, or ``None`` when its capability is off."""
        return self.components.find(kind)

    def get(self, kind: type[T]) -> T:
        """The component of this type; :class:`CapabilityUnavailable` when it is off."""
        return self.components.get(kind)

    def capability(self, name: str) -> Capability | None:
        return next((c for c in self.capabilities if c.name == name), None)

    def finish(self, ctx: RequestContext) -> None:
        """Record a completed (or failed) request: metrics now, the log in the background."""
        self.metrics.observe(ctx)
        self.request_log.submit(ctx)
