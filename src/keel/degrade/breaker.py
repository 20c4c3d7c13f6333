"""The circuit breaker: evaluate alarms once per period, step the ladder down or up.

An alarm *breaches* a scope (global, or one tenant for ``scope = "tenant"`` alarms) when
its value is above ``threshold`` for ``evaluation_periods`` consecutive periods; the
scope then steps one level down and the streak starts again. The scope steps one level
back up after every one of its alarms stayed below ``recover_below`` for the largest
``recovery_periods``. Between the two thresholds nothing changes (hysteresis).

Every replica flushes its counters and computes the alarm values each period (for its
gauges); one replica per period -- whichever wins ``set_if_absent`` on the period's lock
key -- moves the streaks and the level, so replicas never double-count a period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from sqlalchemy import Connection

from keel.background import Periodic
from keel.degrade import audit
from keel.degrade.audit import Flip
from keel.degrade.flags import ModeFlags, ModeState
from keel.degrade.ladder import Ladder
from keel.degrade.meter import GLOBAL, RollingMeter
from keel.degrade.settings import AlarmSettings, DegradeSettings
from keel.ports.kv import KV
from keel.storage.sql import Database

log = logging.getLogger("keel.degrade")

STREAKS = "dg:streaks"
LOCK = "dg:eval:"

Values = dict[str, dict[str, float]]  # alarm name -> scope -> value


@dataclass
class Evaluation:
    at: float
    period: int
    values: Values
    leader: bool
    flips: list[Flip]


def alarm_values(alarms: list[AlarmSettings], totals: dict[float, dict[str, dict[str, float]]]
                 ) -> Values:
    out: Values = {}
    for a in alarms:
        t = totals[a.window_s]
        if a.metric == "spend_usd_per_hour":
            raw, unit = t["usd"], 3600.0
        else:
            raw, unit = t["inv"], 60.0
        scopes = {GLOBAL: raw.get(GLOBAL, 0.0)} if a.scope == "global" else \
            {s: v for s, v in raw.items() if s != GLOBAL}
        out[a.name] = {s: v * unit / a.window_s for s, v in scopes.items()}
    return out


class Breaker:
    def __init__(self, kv: KV, db: Database, settings: DegradeSettings, ladder: Ladder,
                 flags: ModeFlags, meter: RollingMeter, *, replica: str | None = None,
                 on_evaluated: Callable[[], None] | None = None) -> None:
        self.kv = kv
        self.db = db
        self.settings = settings
        self.ladder = ladder
        self.flags = flags
        self.meter = meter
        self.replica = replica or f"{os.uname().nodename}:{os.getpid()}:{id(self):x}"
        self.values: Values = {}
        self.last: Evaluation | None = None
        self.on_evaluated = on_evaluated
        self._ticker: Periodic | None = None
        self._started = False
        self._last_period = 0

    async def compute(self, now: float) -> Values:
        windows = {a.window_s for a in self.settings.alarms}
        totals = {w: await self.meter.totals(w, now) for w in windows}
        return alarm_values(self.settings.alarms, totals)

    async def evaluate(self, now: float | None = None, *, force_leader: bool = False
                       ) -> Evaluation:
        """One period: flush, compute the values, and (as leader) move the ladder."""
        now = now or time.time()
        period = int(now // self.settings.period_s)
        await self.meter.flush(now)
        values = await self.compute(now)
        self.values = values
        leader = force_leader or await self.kv.set_if_absent(
            f"{LOCK}{period}", self.replica, ttl_s=3 * self.settings.period_s + 5)
        flips: list[Flip] = []
        if leader:
            flips = await self._step(values, now)
        self.last = Evaluation(now, period, values, leader, flips)
        if self.on_evaluated is not None:
            self.on_evaluated()
        return self.last

    async def _step(self, values: Values, now: float) -> list[Flip]:
        raw = await self.kv.get(STREAKS)
        streaks: dict[str, dict[str, int]] = orjson.loads(raw) if raw else {}
        settings = self.settings
        await self.flags.load()  # act on the freshest shared state
        if self.settings is not settings:  # the ladder changed meanwhile: values are stale
            return []
        old = self.flags.state
        state = ModeState(old.level, dict(old.tenants))
        scopes = {GLOBAL} | set(state.tenants) | {
            s for a in self.settings.alarms if a.scope == "tenant" for s in values[a.name]}
        flips: list[Flip] = []
        for scope in sorted(scopes):
            kind = "global" if scope == GLOBAL else "tenant"
            alarms = [a for a in self.settings.alarms if a.scope == kind]
            if not alarms:
                continue
            st = streaks.setdefault(scope, {})
            current = state.level if scope == GLOBAL else state.tenants.get(scope, 0)
            seen = {a.name: values[a.name].get(scope, 0.0) for a in alarms}
            tripped = []
            for a in alarms:
                if seen[a.name] > a.threshold:
                    st[a.name] = st.get(a.name, 0) + 1
                    if st[a.name] >= a.evaluation_periods:
                        tripped.append(a)
                else:
                    st[a.name] = 0
            all_ok = all(seen[a.name] < a.recover_below for a in alarms)
            st["ok"] = st.get("ok", 0) + 1 if all_ok else 0
            target, reason = current, ""
            if tripped and current < self.ladder.bottom:
                target = current + 1
                reason = "alarm " + ", ".join(
                    f"{a.name} {seen[a.name]:.4g} > {a.threshold:g}" for a in tripped)
                for a in alarms:
                    st[a.name] = 0
            elif all_ok and current > 0 and st["ok"] >= max(a.recovery_periods for a in alarms):
                target = current - 1
                reason = "recovered: every alarm below its recovery threshold for " \
                         f"{st['ok']} periods"
                st["ok"] = 0
            if target != current:
                if scope == GLOBAL:
                    state.level = target
                elif target == 0:
                    state.tenants.pop(scope, None)
                else:
                    state.tenants[scope] = target
                flips.append(Flip(now, scope, self.ladder.at(current).name,
                                  self.ladder.at(target).name, reason,
                                  f"breaker@{self.replica}", seen))
        await self.kv.set(STREAKS, orjson.dumps(streaks).decode())
        if flips:
            await self.flags.write_state(state)

            def save(c: Connection) -> None:
                for f in flips:
                    audit.record(c, f)

            await self.db.run(save)
            for f in flips:
                log.warning("degrade: %s %s -> %s (%s)", f.scope, f.from_level, f.to_level,
                            f.reason)
        return flips

    async def _tick(self) -> None:
        """Flush this replica's meter; once a period closed, evaluate the alarms."""
        period_s = self.settings.period_s
        tick = min(1.0, period_s / 4, self.settings.bucket_s)
        slack = min(tick + 0.1, period_s / 2)  # let every replica flush the closing period
        now = time.time()
        period = int((now - slack) // period_s)
        if period > self._last_period:
            self._last_period = period
            await self.evaluate(now)
        else:
            await self.meter.flush(now)

    def reconfigure(self, settings: DegradeSettings, ladder: Ladder) -> None:
        """A new ladder or new alarms (admin API): evaluate with them from the next tick."""
        self.settings, self.ladder = settings, ladder
        if settings.alarms and self._ticker is None and self._started:
            self._start_ticker()

    async def start(self) -> None:
        self._started = True
        if self.settings.alarms and self._ticker is None:
            self._start_ticker()

    def _start_ticker(self) -> None:
        s = self.settings
        self._last_period = int(time.time() // s.period_s)
        self._ticker = Periodic("keel-degrade-breaker", min(1.0, s.period_s / 4, s.bucket_s),
                                self._tick, error="degrade: evaluating the alarms failed",
                                logger=log)
        self._ticker.start()

    async def aclose(self) -> None:
        self._started = False
        if self._ticker is not None:
            await self._ticker.stop()
            self._ticker = None
        with contextlib.suppress(Exception):
            await self.meter.flush()
