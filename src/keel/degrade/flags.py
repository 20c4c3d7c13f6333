"""The current level, kept in the KV port and mirrored in memory on every replica.

Three keys hold the state: ``dg:state`` (levels the breaker chose, global and per tenant),
``dg:override`` (a manual level with an expiry, written by ``keel mode set`` or the admin
API) and ``dg:config`` (levels and alarms set at runtime through the admin API; absent:
keel.toml's or the default ladder). Every write bumps ``dg:version``. Each replica reads
only the version every ``refresh_s`` (0.25 s) and reloads the keys when it changed, so
replicas agree within ~0.3 s of a flip or a ladder change and a request reads its level
with one dict lookup and no I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from keel.background import Periodic
from keel.degrade.ladder import Ladder, Level
from keel.ports.kv import KV

log = logging.getLogger("keel.degrade")

STATE = "dg:state"
OVERRIDE = "dg:override"
CONFIG = "dg:config"
VERSION = "dg:version"


@dataclass(frozen=True)
class Override:
    level: int
    until: float | None
    actor: str

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now


@dataclass
class ModeState:
    level: int = 0  # global level chosen by the breaker
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> level (when deeper)


class ModeFlags:
    def __init__(self, kv: KV, ladder: Ladder, *, refresh_s: float = 0.25,
                 on_change: Callable[[], None] | None = None,
                 on_config: Callable[[str | None], Ladder] | None = None) -> None:
        self.kv = kv
        self.ladder = ladder
        self.refresh_s = refresh_s
        self.on_change = on_change
        self.on_config = on_config  # the ladder for a stored config (None: the base one)
        self.config_raw: str | None = None
        self.state = ModeState()
        self.override: Override | None = None
        self._version: str | None = None
        self._refresher = Periodic("keel-degrade-flags", refresh_s, self.refresh_if_changed,
                                   error="degrade: refreshing the level failed", logger=log)
        self._level: Level = ladder.at(0)
        self._tenant_levels: dict[str, Level] = {}

    # -- hot path ----------------------------------------------------------------------

    def level_for(self, tenant: str) -> Level:
        """The level serving ``tenant``: a dict lookup on the in-memory snapshot."""
        return self._tenant_levels.get(tenant, self._level)

    @property
    def level(self) -> Level:
        return self._level

    # -- snapshot ----------------------------------------------------------------------

    def _apply(self) -> None:
        now = time.time()
        ov = self.override if self.override is not None and self.override.active(now) else None
        if ov is not None:
            self._level, self._tenant_levels = self.ladder.at(ov.level), {}
        else:
            base = self.state.level
            self._level = self.ladder.at(base)
            self._tenant_levels = {t: self.ladder.at(n) for t, n in self.state.tenants.items()
                                   if n > base}
        if self.on_change is not None:
            self.on_change()

    async def load(self) -> None:
        raw_state, raw_ov = await self.kv.get(STATE), await self.kv.get(OVERRIDE)
        if self.on_config is not None:
            raw_cfg = await self.kv.get(CONFIG)
            if raw_cfg != self.config_raw:
                self.ladder = self.on_config(raw_cfg)
                self.config_raw = raw_cfg
        self.state = _state(raw_state)
        self.override = _override(raw_ov)
        self._apply()

    async def refresh_if_changed(self) -> None:
        version = await self.kv.get(VERSION)
        if version != self._version:
            await self.load()
            self._version = version
        elif self.override is not None and not self.override.active(time.time()) \
                and self._level.index == self.override.level:
            self._apply()  # the override just expired

    async def start(self) -> None:
        await self.refresh_if_changed()
        self._refresher.interval_s = self.refresh_s
        self._refresher.start()  # the KV store may blip: the last level keeps serving

    async def aclose(self) -> None:
        await self._refresher.stop()

    # -- writes ------------------------------------------------------------------------

    async def _bump(self) -> None:
        self._version = str(await self.kv.incr(VERSION))
        self._apply()

    async def write_state(self, state: ModeState) -> None:
        self.state = state
        await self.kv.set(STATE, orjson.dumps({"level": state.level,
                                               "tenants": state.tenants}).decode())
        await self._bump()

    async def set_override(self, level: int, duration_s: float | None, actor: str) -> Override:
        until = None if duration_s is None else time.time() + duration_s
        ov = Override(level, until, actor)
        await self.kv.set(OVERRIDE, orjson.dumps({"level": level, "until": until,
                                                  "actor": actor}).decode(), ttl_s=duration_s)
        self.override = ov
        await self._bump()
        return ov

    async def write_config(self, raw: str | None) -> None:
        """Store (or with None drop) the runtime ladder; every replica picks it up."""
        if raw is None:
            await self.kv.delete(CONFIG)
        else:
            await self.kv.set(CONFIG, raw)
        await self._bump()
        await self.load()

    async def clear_override(self) -> bool:
        existed = await self.kv.delete(OVERRIDE)
        self.override = None
        await self._bump()
        return existed


def _state(raw: str | None) -> ModeState:
    if not raw:
        return ModeState()
    d = orjson.loads(raw)
    return ModeState(int(d.get("level", 0)), {str(k): int(v) for k, v in
                                              (d.get("tenants") or {}).items()})


def _override(raw: str | None) -> Override | None:
    if not raw:
        return None
    d = orjson.loads(raw)
    return Override(int(d["level"]), d.get("until"), str(d.get("actor", "")))
