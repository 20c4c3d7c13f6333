"""The firewall stage: first in the pipeline, so blocked prompts cost no model work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from keel.errors import ClientBanned, PayloadTooLarge, PromptBlocked
from keel.firewall.engine import Firewall
from keel.firewall.extract import extract_texts
from keel.firewall.state import FirewallState
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next


class FirewallMetrics:
    def __init__(self, registry: CollectorRegistry, state: FirewallState) -> None:
        self.blocks = Counter("keel_firewall_blocks", "Requests blocked by the firewall",
                              ["layer", "rule"], registry=registry)
        self.bans = Counter("keel_firewall_bans", "Clients banned", registry=registry)
        active = Gauge("keel_firewall_bans_active", "Active bans (this replica's snapshot)",
                       registry=registry)
        active.set_function(lambda: state.active_bans)


class FirewallStage:
    name = "firewall"

    def __init__(self, firewall: Firewall, state: FirewallState, metrics: FirewallMetrics):
        self.firewall = firewall
        self.state = state
        self.metrics = metrics
        self.settings = firewall.settings

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        if ctx.route == "embeddings":  # documents to embed are not instructions to a model
            await call_next(ctx)
            return
        clients = [f"ip:{ctx.client_ip}", f"key:{ctx.principal.key_id}"]
        ban = self.state.banned(clients)
        if ban is not None:
            ctx.decide(self.name, "banned", ban.client)
            self.metrics.blocks.labels("ban", "banned").inc()
            raise ClientBanned(
                "this client is banned after repeated prompt-injection attempts"
                + (" until " + _iso(ban.until) if ban.until else "")
            )
        texts, user_texts = extract_texts(ctx.body, self.settings.scan_fields)
        size = sum(len(t) for t in texts)
        if size > self.settings.max_scan_chars:
            raise PayloadTooLarge(
                f"the prompt text is {size} characters; the firewall accepts at most "
                f"{self.settings.max_scan_chars} (firewall.max_scan_chars)"
            )
        verdict = await self.firewall.check(texts, user_texts)
        if verdict is not None and self.state.allowed(ctx.principal.tenant, verdict.rule, texts):
            ctx.decide(self.name, "allow-listed", f"{verdict.layer}:{verdict.rule}")
            verdict = None
        if verdict is None:
            await call_next(ctx)
            return
        detail = f"{verdict.layer}:{verdict.rule} ({verdict.category}, {verdict.score:.3f})"
        ctx.decide(self.name, "block", detail)
        self.metrics.blocks.labels(verdict.layer, verdict.rule).inc()
        for new in await self.state.strike(clients, verdict.rule):
            ctx.decide(self.name, "ban", new.client)
            self.metrics.bans.inc()
        raise PromptBlocked(
            f"request blocked by the prompt-injection firewall (rule {verdict.rule}, "
            f"{verdict.category}); if this is a false positive, ask an admin to allow-list it",
            rule=verdict.rule, layer=verdict.layer,
        )


def _iso(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
