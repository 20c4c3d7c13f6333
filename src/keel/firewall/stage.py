"""The firewall stage: first in the pipeline, so blocked prompts cost no model work.

Per request: the mode for the tenant and route (``block``, ``flag`` or ``off``), the end
user's identity (:mod:`keel.firewall.identity`), bans, then the judged texts (user turns,
tool results; never system prompts or earlier assistant turns) minus allow-listed ones.
A block is a strike against the end user; ``flag`` answers normally and marks the request
(``x-keel-firewall`` header, a ``flag`` decision in the request log, a metric).

keel's own calls for an admitted request (:class:`~keel.firewall.identity.InternalCall`,
e.g. a reasoning run's samples and judges) are not scanned: the question was judged once
at the front, and the judge prompts are keel's text quoting it and the samples. They only
meet the ban check, as the run's end user; they are never struck or rate-limited.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from keel.errors import ClientBanned, PayloadTooLarge, PromptBlocked, RateLimited
from keel.firewall.engine import Firewall
from keel.firewall.extract import ScanItem, extract_items
from keel.firewall.identity import INTERNAL_CALL, Identity, InternalCall, mode_for, resolve
from keel.firewall.state import Ban, FirewallState, describe, iso
from keel.firewall.verdict import Verdict
from keel.gateway.context import RequestContext
from keel.gateway.embedding_memo import EmbeddingMemo
from keel.gateway.pipeline import Next

log = logging.getLogger("keel.firewall")
HEADER = "x-keel-firewall"


class FirewallMetrics:
    def __init__(self, registry: CollectorRegistry, state: FirewallState) -> None:
        self.blocks = Counter("keel_firewall_blocks", "Requests blocked by the firewall",
                              ["layer", "rule"], registry=registry)
        self.flags = Counter("keel_firewall_flags",
                             "Requests the firewall would have blocked (flag mode)",
                             ["layer", "rule"], registry=registry)
        self.bans = Counter("keel_firewall_bans", "End users (or opted-in keys/IPs) banned",
                            registry=registry)
        self.canary_leaks = Counter("keel_firewall_canary_leaks",
                                    "Assistant turns that contained the canary token",
                                    registry=registry)
        self.watches = Counter("keel_firewall_watches",
                               "Keys watched for repeated anonymous blocks (not banned)",
                               registry=registry)
        active = Gauge("keel_firewall_bans_active", "Active bans (this replica's snapshot)",
                       registry=registry)
        active.set_function(lambda: state.active_bans)


def banned_error(ban: Ban) -> ClientBanned:
    until = iso(ban.until) if ban.until else None
    return ClientBanned(
        f"{describe(ban.client)} is banned by the prompt-injection firewall "
        + (f"until {until}" if until else "until an admin lifts it")
        + f" ({ban.reason}); an admin can lift it with `keel firewall unban {ban.client}`",
        banned=ban.client, until=until)


def size_guard(items: list[ScanItem], limit: int, what: str = "the prompt text") -> None:
    size = sum(len(i.text) for i in items)
    if size > limit:
        raise PayloadTooLarge(f"{what} is {size} characters; the firewall accepts at most "
                              f"{limit} (firewall.max_scan_chars)")


class FirewallStage:
    name = "firewall"

    def __init__(self, firewall: Firewall, state: FirewallState, metrics: FirewallMetrics):
        self.firewall = firewall
        self.state = state
        self.metrics = metrics
        self.settings = firewall.settings

    async def judge(self, tenant: str, items: list[ScanItem],
                    memo: EmbeddingMemo | None = None) -> Verdict | None:
        """The verdict on ``items`` for ``tenant``: allow-listed texts and rules excluded."""
        state = self.state
        texts = [i.text for i in items if not state.text_allowed(tenant, i.role, i.text)]
        if not texts:
            return None
        return await self.firewall.check(texts, lambda rule: state.rule_allowed(tenant, rule),
                                         memo)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        if ctx.route == "embeddings":  # documents to embed are not instructions to a model
            await call_next(ctx)
            return
        tenant = ctx.principal.tenant
        mode = mode_for(self.settings, tenant, ctx.route)
        if mode == "off":
            await call_next(ctx)
            return
        internal = INTERNAL_CALL.get()
        if internal is not None:
            await self._internal(ctx, internal, mode, call_next)
            return
        who = resolve(self.settings, tenant=tenant, key_id=ctx.principal.key_id,
                      body=ctx.body, headers=ctx.headers, client_ip=ctx.client_ip,
                      forwarded_ip=ctx.forwarded_ip)
        if mode == "block":
            await self._admit(ctx, who)
        judged, context = extract_items(ctx.body, self.settings.scan_fields)
        if self.settings.canary:
            self._canary(ctx, context)
        size_guard(judged, self.settings.max_scan_chars)
        verdict = await self.judge(tenant, judged, ctx.embeddings)
        if verdict is None:
            await call_next(ctx)
            return
        detail = f"{verdict.layer}:{verdict.rule} ({verdict.category}, {verdict.score:.3f})"
        if mode == "flag":
            ctx.decide(self.name, "flag", detail)
            ctx.response_headers[HEADER] = f"flagged; rule={verdict.rule}"
            self.metrics.flags.labels(verdict.layer, verdict.rule).inc()
            await call_next(ctx)
            return
        ctx.decide(self.name, "block", detail)
        self.metrics.blocks.labels(verdict.layer, verdict.rule).inc()
        await self._strike(ctx, who, verdict.rule)
        raise PromptBlocked(
            f"request blocked by the prompt-injection firewall (rule {verdict.rule}, "
            f"{verdict.category}); if this is a false positive, ask an admin to allow-list it",
            rule=verdict.rule, layer=verdict.layer,
        )

    def _canary(self, ctx: RequestContext, context: list[ScanItem]) -> None:
        """Report (never block) an earlier assistant turn that leaked the canary token."""
        canary = self.settings.canary
        if any(i.role == "assistant" and canary in i.text for i in context):
            ctx.decide(self.name, "canary-leak", "an assistant turn contains the canary")
            self.metrics.canary_leaks.inc()
            log.warning("firewall: request %s of tenant %s carries an assistant turn with the "
                        "canary token (the system prompt leaked)", ctx.id, ctx.principal.tenant)

    async def _internal(self, ctx: RequestContext, call: InternalCall, mode: str,
                        call_next: Next) -> None:
        """An internal call: refused only when its end user or key is banned."""
        if mode == "block":
            tenant = ctx.principal.tenant
            checks = [f"user:{tenant}:{call.end_user}"] if call.end_user else []
            ban = self.state.banned([*checks, f"key:{ctx.principal.key_id}"])
            if ban is not None:
                ctx.decide(self.name, "banned", ban.client)
                raise banned_error(ban)
        ctx.decide(self.name, "internal", f"{call.purpose}: not scanned")
        await call_next(ctx)

    async def _admit(self, ctx: RequestContext, who: Identity) -> None:
        """Refuse banned end users; rate-limit anonymous traffic of a watched key."""
        ban = self.state.banned(list(who.checks))
        if ban is not None:
            ctx.decide(self.name, "banned", ban.client)
            self.metrics.blocks.labels("ban", "banned").inc()
            raise banned_error(ban)
        limit = self.settings.watch_rate_per_min
        if (who.watch is not None and limit > 0 and self.state.watched(who.watch) is not None
                and not await self.state.within_rate(who.watch, limit)):
            ctx.decide(self.name, "rate-limited", who.watch)
            raise RateLimited(
                f"{describe(who.watch)} is watched after repeated blocked prompts that "
                f"named no end user; its anonymous requests are limited to {limit} per "
                "minute. Send the end user's id in the `user` field or the "
                f"{self.settings.end_user_header} header so only the attacker is stopped",
                retry_after=60 - time.time() % 60)

    async def _strike(self, ctx: RequestContext, who: Identity, rule: str) -> None:
        if who.subjects:
            for new in await self.state.strike(list(who.subjects), rule):
                ctx.decide(self.name, "ban", new.client)
                self.metrics.bans.inc()
        elif (who.watch is not None
              and await self.state.watch_strike(who.watch, rule) is not None):
            ctx.decide(self.name, "watch", who.watch)
            self.metrics.watches.inc()
