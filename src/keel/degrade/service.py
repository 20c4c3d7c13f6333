"""The degradation capability as one object: ladder, flags, meter, breaker and gauges."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Gauge
from pydantic import ValidationError

from keel.config import ModelSpec
from keel.degrade import audit
from keel.degrade.breaker import Breaker
from keel.degrade.flags import ModeFlags, Override
from keel.degrade.ladder import Ladder
from keel.degrade.meter import RollingMeter
from keel.degrade.settings import DegradeSettings, LadderConfig
from keel.degrade.stage import DegradeStage
from keel.errors import ConfigError, InvalidRequest, KeelError
from keel.ports.kv import KV
from keel.storage.sql import Database

log = logging.getLogger("keel.degrade")


def describe(cfg: LadderConfig) -> str:
    """One line for the audit log: the levels and the alarms' thresholds."""
    levels = " -> ".join(lv.name.upper() for lv in cfg.levels)
    alarms = ", ".join(f"{a.name} > {a.threshold:g}" for a in cfg.alarms) or "no alarms"
    return f"{levels}; {alarms}"


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
        self.base = settings  # keel.toml (levels empty: the default ladder)
        self.table = table
        self.db = db
        self.config = settings.ladder_config()
        self.source = "keel.toml" if settings.levels else "default"
        self.ladder = Ladder.build(self.config, table)  # ConfigError names the bad key
        self.settings = self._effective(self.config)
        self.gauges = DegradeGauges(registry) if registry is not None else None
        self.flags = ModeFlags(kv, self.ladder, refresh_s=settings.refresh_s,
                               on_change=self._export, on_config=self._on_config)
        self.meter = RollingMeter(kv, bucket_s=settings.bucket_s,
                                  retention_s=self._retention(self.config))
        self.breaker = Breaker(kv, db, self.settings, self.ladder, self.flags, self.meter,
                               on_evaluated=self._export)
        self.stage = DegradeStage(self.flags, self.meter)
        self.stage.metering = bool(self.config.alarms)
        self._set_thresholds()

    # -- the ladder in force: keel.toml's (or the default), or one set at runtime ----------

    def _effective(self, cfg: LadderConfig) -> DegradeSettings:
        return self.base.model_copy(update={"levels": cfg.levels, "alarms": cfg.alarms})

    @staticmethod
    def _retention(cfg: LadderConfig) -> float:
        return max((a.window_s for a in cfg.alarms), default=60.0)

    def _set_thresholds(self) -> None:
        if self.gauges is not None:
            for a in self.config.alarms:
                self.gauges.threshold.labels(a.name).set(a.threshold)

    def _on_config(self, raw: str | None) -> Ladder:
        """A replica saw a new runtime ladder (or its removal) in the KV store: swap it in.
        One this replica cannot build (its model table lacks a model) keeps the last one."""
        try:
            cfg = self.base.ladder_config() if raw is None else \
                LadderConfig.model_validate_json(raw)
            ladder = Ladder.build(cfg, self.table)
        except (ValidationError, KeelError) as exc:
            log.error("degrade: ignoring the runtime ladder in the KV store: %s", exc)
            return self.ladder
        self.config, self.ladder = cfg, ladder
        self.source = "keel.toml" if raw is None and self.base.levels else \
            "default" if raw is None else "runtime"
        self.settings = self._effective(cfg)
        self.meter.retention_s = self._retention(cfg)
        self.breaker.reconfigure(self.settings, ladder)
        self.stage.metering = bool(cfg.alarms)
        self._set_thresholds()
        return ladder

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

    async def set_config(self, body: Any, actor: str) -> LadderConfig:
        """Validate a ladder (levels, alarms) against this replica's model table, store it
        for every replica, and audit it. Bad input raises InvalidRequest; nothing changes."""
        if not isinstance(body, dict):
            raise InvalidRequest('send {"levels": [...], "alarms": [...]}')
        try:
            cfg = LadderConfig.model_validate(body)
            Ladder.build(cfg, self.table)
        except ValidationError as exc:
            raise InvalidRequest("invalid ladder: " + "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:5])) from None
        except ConfigError as exc:
            raise InvalidRequest(f"invalid ladder: {exc.message}") from None
        before = self.flags.level.name
        raw = cfg.model_dump_json()
        await self.flags.write_config(raw)
        await self._audit(before, self.flags.level.name, "ladder set: " + describe(cfg), actor,
                          scope="config", detail=orjson.loads(raw))
        return cfg

    async def reset_config(self, actor: str) -> None:
        """Drop the runtime ladder: keel.toml's (or the default) applies again everywhere."""
        before = self.flags.level.name
        await self.flags.write_config(None)
        await self._audit(before, self.flags.level.name,
                          f"ladder reset to {self.source}: " + describe(self.config), actor,
                          scope="config")

    async def set_auto(self, actor: str) -> None:
        before = self.flags.level.name
        await self.flags.clear_override()
        await self._audit(before, self.flags.level.name, "manual override cleared (auto)",
                          actor)

    async def _audit(self, before: str, after: str, reason: str, actor: str, *,
                     scope: str = "*", detail: dict[str, Any] | None = None) -> None:
        values = await self.breaker.compute(time.time()) if self.settings.alarms else {}
        flat: dict[str, Any] = {f"{a}:{s}": v for a, scopes in values.items()
                                for s, v in scopes.items()}
        if detail is not None:
            flat = {**flat, "ladder": detail}
        flip = audit.Flip(time.time(), scope, before, after, reason[:200], actor[:200], flat)
        await self.db.run(lambda c: audit.record(c, flip))

    def status(self) -> dict[str, Any]:
        ov = self.flags.override
        now = time.time()
        return {
            "mode": self.flags.level.name,
            "levels": [lv.name for lv in self.ladder.levels],
            "ladder_source": self.source,  # keel.toml | default | runtime
            "ladder": self.config.model_dump(mode="json"),
            "breaker_level": self.ladder.at(self.flags.state.level).name,
            "tenants": {t: self.ladder.at(n).name for t, n in self.flags.state.tenants.items()},
            "override": None if ov is None or not ov.active(now) else
            {"mode": self.ladder.at(ov.level).name, "until": ov.until, "actor": ov.actor},
            "alarms": [{"name": a.name, "metric": a.metric, "scope": a.scope,
                        "threshold": a.threshold, "recover_below": a.recover_below,
                        "window_s": a.window_s, "values": self.breaker.values.get(a.name, {})}
                       for a in self.settings.alarms],
        }
