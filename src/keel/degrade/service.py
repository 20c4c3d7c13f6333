"""The degradation capability as one object: ladder, flags, meter, breaker and gauges."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from keel.config import ModelSpec
from keel.degrade import audit
from keel.degrade.breaker import Breaker
from keel.degrade.flags import ModeFlags, Override
from keel.degrade.ladder import Ladder
from keel.degrade.meter import RollingMeter
from keel.degrade.settings import DegradeSettings
from keel.degrade.stage import DegradeStage
from keel.ports.kv import KV
from keel.storage.sql import Database


class DegradeGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.level = Gauge("keel_degrade_level",
                           "Degradation level serving requests (0 = full quality)", ["scope"],
                           registry=registry)
        self.alarm = Gauge("keel_degrade_alarm_value", "Alarm metric over its window",
                           ["alarm", "scope"], registry=registry)
        self.threshold = Gauge("keel_degrade_alarm_threshold", "Alarm breach threshold",
                               ["alarm"], registry=registry)
        self.override = Gauge("keel_degrade_override", "1 while a manual override is active",
                              registry=registry)


class Degrader:
    def __init__(self, kv: KV, db: Database, settings: DegradeSettings,
                 table: list[ModelSpec], registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.db = db
        self.ladder = Ladder.build(settings, table)  # ConfigError names the bad key
        self.gauges = DegradeGauges(registry) if registry is not None else None
        self.flags = ModeFlags(kv, self.ladder, refresh_s=settings.refresh_s,
                               on_change=self._export)
        retention = max((a.window_s for a in settings.alarms), default=60.0)
        self.meter = RollingMeter(kv, bucket_s=settings.bucket_s, retention_s=retention)
        self.breaker = Breaker(kv, db, settings, self.ladder, self.flags, self.meter,
                              on_evaluated=self._export)
        self.stage = DegradeStage(self.flags, self.meter)
        if self.gauges is not None:
            for a in settings.alarms:
                self.gauges.threshold.labels(a.name).set(a.threshold)

    def _export(self) -> None:
        g = self.gauges
        if g is None:
            return
        g.level.labels("*").set(self.flags.level.index)
        for tenant in self.flags.state.tenants:
            g.level.labels(tenant).set(self.flags.level_for(tenant).index)
        ov = self.flags.override
        g.override.set(1 if ov is not None and ov.active(time.time()) else 0)
        for alarm, scopes in self.breaker.values.items():
            for scope, value in scopes.items():
                g.alarm.labels(alarm, scope).set(value)

    async def start(self) -> None:
        await self.flags.start()
        await self.breaker.start()

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self.flags.aclose()

    # -- admin operations (CLI, admin API, console) ---------------------------------------

    async def set_mode(self, name: str, duration_s: float | None, actor: str) -> Override:
        level = self.ladder.by_name(name)
        before = self.flags.level.name
        ov = await self.flags.set_override(level.index, duration_s, actor)
        until = "until changed" if ov.until is None else f"for {duration_s:g}s"
        await self._audit(before, level.name, f"manual override {until}", actor)
        return ov

    async def set_auto(self, actor: str) -> None:
        before = self.flags.level.name
        await self.flags.clear_override()
        await self._audit(before, self.flags.level.name, "manual override cleared (auto)",
                          actor)

    async def _audit(self, before: str, after: str, reason: str, actor: str) -> None:
        values = await self.breaker.compute(time.time()) if self.settings.alarms else {}
        flat = {f"{a}:{s}": v for a, scopes in values.items() for s, v in scopes.items()}
        flip = audit.Flip(time.time(), "*", before, after, reason, actor, flat)
        await self.db.run(lambda c: audit.record(c, flip))

    def status(self) -> dict[str, Any]:
        ov = self.flags.override
        now = time.time()
        return {
            "mode": self.flags.level.name,
            "levels": [lv.name for lv in self.ladder.levels],
            "breaker_level": self.ladder.at(self.flags.state.level).name,
            "tenants": {t: self.ladder.at(n).name for t, n in self.flags.state.tenants.items()},
            "override": None if ov is None or not ov.active(now) else
            {"mode": self.ladder.at(ov.level).name, "until": ov.until, "actor": ov.actor},
            "alarms": [{"name": a.name, "metric": a.metric, "scope": a.scope,
                        "threshold": a.threshold, "recover_below": a.recover_below,
                        "window_s": a.window_s, "values": self.breaker.values.get(a.name, {})}
                       for a in self.settings.alarms],
        }
