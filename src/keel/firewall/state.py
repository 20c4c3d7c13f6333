"""Bans, strikes and the allow-list, kept in the KV port and mirrored in memory.

Every gateway replica mirrors active bans and allow-list entries in memory and checks a
version counter in the KV store every ``refresh_s`` (1 s), reloading only when a replica
changed something; checking a client costs a dict lookup and no I/O on the hot path, and
all replicas agree within about a second. Strike counters live in
the KV store only (they are touched on blocks, not on clean traffic).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import orjson

from keel.background import Periodic
from keel.config import FirewallSettings
from keel.ports.kv import KV

log = logging.getLogger("keel.firewall")

BAN = "fw:ban:"
STRIKE = "fw:strike:"
ALLOW_RULE = "fw:allow:rule:"
ALLOW_HASH = "fw:allow:hash:"
VERSION = "fw:version"  # bumped on every ban/unban/allow: replicas reload only on change


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Ban:
    client: str  # "ip:1.2.3.4" or "key:<key id>"
    reason: str
    since: float
    until: float | None


class FirewallState:
    def __init__(self, kv: KV, settings: FirewallSettings, *, refresh_s: float = 1.0) -> None:
        self.kv = kv
        self.settings = settings
        self.refresh_s = refresh_s
        self._bans: dict[str, Ban] = {}
        self._allow_rules: set[tuple[str, str]] = set()  # (tenant or "*", rule id)
        self._allow_hashes: set[str] = set()
        self._refresher = Periodic("keel-firewall-state", refresh_s, self.refresh_if_changed,
                                   error="firewall: refreshing bans failed", logger=log)
        self._version: str | None = None

    # -- snapshot ------------------------------------------------------------------------

    async def refresh_if_changed(self) -> None:
        """One KV read per tick; the full reload only when some replica changed something."""
        version = await self.kv.get(VERSION)
        if version != self._version:
            await self.refresh()
            self._version = version

    async def _changed(self) -> None:
        self._version = str(await self.kv.incr(VERSION))

    async def refresh(self) -> None:
        bans: dict[str, Ban] = {}
        for key in await self.kv.keys(BAN):
            raw = await self.kv.get(key)
            if raw is None:
                continue
            d = orjson.loads(raw)
            bans[key[len(BAN):]] = Ban(key[len(BAN):], d.get("reason", ""), d.get("since", 0.0),
                                       d.get("until"))
        rules = set()
        for key in await self.kv.keys(ALLOW_RULE):
            tenant, _, rule = key[len(ALLOW_RULE):].partition(":")
            rules.add((tenant, rule))
        hashes = {k[len(ALLOW_HASH):] for k in await self.kv.keys(ALLOW_HASH)}
        self._bans, self._allow_rules, self._allow_hashes = bans, rules, hashes

    async def start(self) -> None:
        await self.refresh_if_changed()
        self._refresher.interval_s = self.refresh_s
        self._refresher.start()  # the KV store may blip: the last snapshot keeps serving

    async def aclose(self) -> None:
        await self._refresher.stop()

    # -- hot path (memory only) -----------------------------------------------------------

    def banned(self, clients: list[str]) -> Ban | None:
        now = time.time()
        for c in clients:
            ban = self._bans.get(c)
            if ban is not None and (ban.until is None or ban.until > now):
                return ban
        return None

    def allowed(self, tenant: str, rule: str, texts: list[str]) -> bool:
        if (tenant, rule) in self._allow_rules or ("*", rule) in self._allow_rules:
            return True
        return bool(self._allow_hashes) and any(
            prompt_hash(t) in self._allow_hashes for t in texts
        )

    @property
    def active_bans(self) -> int:
        now = time.time()
        return sum(1 for b in self._bans.values() if b.until is None or b.until > now)

    # -- writes ----------------------------------------------------------------------------

    async def strike(self, clients: list[str], reason: str) -> list[Ban]:
        """Count a block against each client; ban those over the limit. Returns new bans."""
        s = self.settings
        new: list[Ban] = []
        for c in clients:
            n = await self.kv.incr(STRIKE + c, 1, ttl_s=s.strike_window_s)
            if n >= s.strikes and self.banned([c]) is None:
                why = f"{n} blocks in {s.strike_window_s:g}s; last: {reason}"
                new.append(await self.ban(c, why, s.ban_s))
        return new

    async def ban(self, client: str, reason: str, duration_s: float | None) -> Ban:
        now = time.time()
        ban = Ban(client, reason, now, None if duration_s is None else now + duration_s)
        record = {"reason": reason, "since": now, "until": ban.until}
        await self.kv.set(BAN + client, orjson.dumps(record).decode(), ttl_s=duration_s)
        self._bans[client] = ban
        await self._changed()
        return ban

    async def unban(self, client: str) -> bool:
        existed = await self.kv.delete(BAN + client)
        await self.kv.delete(STRIKE + client)
        self._bans.pop(client, None)
        await self._changed()
        return existed

    async def list_bans(self) -> list[Ban]:
        await self.refresh()
        return sorted(self._bans.values(), key=lambda b: b.since, reverse=True)

    async def allow_rule(self, rule: str, tenant: str = "*") -> None:
        await self.kv.set(f"{ALLOW_RULE}{tenant}:{rule}", "1")
        self._allow_rules.add((tenant, rule))
        await self._changed()

    async def allow_prompt(self, text: str) -> str:
        digest = prompt_hash(text)
        await self.kv.set(ALLOW_HASH + digest, "1")
        self._allow_hashes.add(digest)
        await self._changed()
        return digest
