"""Bans, strikes, watched keys and the allow-list, kept in the KV port and mirrored in memory.

Every gateway replica mirrors active bans, watched keys and allow-list entries in memory and
checks a version counter in the KV store every ``refresh_s`` (1 s), reloading only when a
replica changed something; checking a client costs a dict lookup and no I/O on the hot path,
and all replicas agree within about a second. Strike counters live in the KV store only (they
are touched on blocks, not on clean traffic).

Subjects (who a strike or ban is against): ``user:<tenant>:<end user id>`` (the OpenAI
``user`` field or the end-user header), ``ip:<address>`` (a client address reported by a
trusted proxy, or the socket address when the operator opts in) and ``key:<key id>`` (only
when the operator opts in, or set by hand). A key whose anonymous traffic keeps tripping the
firewall is *watched* instead: reported and rate-limited, never banned by default.

Allow-list entries are scoped: a rule id for one tenant (or ``*``), or the SHA-256 of one
exact text in one role (``user``, ``tool``, ``tool_result``...) for one tenant (or ``*``).
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
WATCH = "fw:watch:"
STRIKE = "fw:strike:"
WATCH_STRIKE = "fw:wstrike:"
RATE = "fw:rate:"
ALLOW_RULE = "fw:allow:rule:"
ALLOW_HASH = "fw:allow:hash:"
VERSION = "fw:version"  # bumped on every ban/unban/allow: replicas reload only on change
SUBJECT_KINDS = ("user:", "ip:", "key:")


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def describe(subject: str) -> str:
    """A subject in words, for messages: ``end user 'bob' of tenant acme``."""
    kind, _, rest = subject.partition(":")
    if kind == "user":
        tenant, _, who = rest.partition(":")
        return f"end user {who!r} of tenant {tenant}"
    if kind == "ip":
        return f"client address {rest}"
    if kind == "key":
        return f"API key {rest}"
    return subject


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class Ban:
    client: str  # the subject: "user:acme:bob", "ip:1.2.3.4" or "key:<key id>"
    reason: str
    since: float
    until: float | None

    @property
    def kind(self) -> str:
        return self.client.partition(":")[0]

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now

    def to_dict(self) -> dict[str, object]:
        return {"client": self.client, "kind": self.kind, "who": describe(self.client),
                "reason": self.reason, "since": iso(self.since),
                "until": iso(self.until) if self.until else None}


def _record(raw: str | None, subject: str) -> Ban | None:
    if raw is None:
        return None
    d = orjson.loads(raw)
    return Ban(subject, d.get("reason", ""), d.get("since", 0.0), d.get("until"))


class FirewallState:
    def __init__(self, kv: KV, settings: FirewallSettings, *, refresh_s: float = 1.0) -> None:
        self.kv = kv
        self.settings = settings
        self.refresh_s = refresh_s
        self._bans: dict[str, Ban] = {}
        self._watches: dict[str, Ban] = {}
        self._allow_rules: set[tuple[str, str]] = set()  # (tenant or "*", rule id)
        self._allow_hashes: set[tuple[str, str, str]] = set()  # (tenant|*, role|*, sha256)
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

    async def _records(self, prefix: str) -> dict[str, Ban]:
        out: dict[str, Ban] = {}
        for key in await self.kv.keys(prefix):
            rec = _record(await self.kv.get(key), key[len(prefix):])
            if rec is not None:
                out[rec.client] = rec
        return out

    async def refresh(self) -> None:
        bans = await self._records(BAN)
        watches = await self._records(WATCH)
        rules = set()
        for key in await self.kv.keys(ALLOW_RULE):
            tenant, _, rule = key[len(ALLOW_RULE):].rpartition(":")
            rules.add((tenant or "*", rule))
        hashes = set()
        for key in await self.kv.keys(ALLOW_HASH):
            parts = key[len(ALLOW_HASH):].rsplit(":", 2)
            if len(parts) == 3:
                hashes.add((parts[0], parts[1], parts[2]))
            else:  # an entry from before scoping: this one text, in any role and tenant
                hashes.add(("*", "*", parts[-1]))
        self._bans, self._watches = bans, watches
        self._allow_rules, self._allow_hashes = rules, hashes

    async def start(self) -> None:
        await self.refresh_if_changed()
        self._refresher.interval_s = self.refresh_s
        self._refresher.start()  # the KV store may blip: the last snapshot keeps serving

    async def aclose(self) -> None:
        await self._refresher.stop()

    # -- hot path (memory only) -----------------------------------------------------------

    def banned(self, subjects: list[str]) -> Ban | None:
        if not self._bans:
            return None
        now = time.time()
        for c in subjects:
            ban = self._bans.get(c)
            if ban is not None and ban.active(now):
                return ban
        return None

    def watched(self, subject: str) -> Ban | None:
        w = self._watches.get(subject)
        return w if w is not None and w.active(time.time()) else None

    def rule_allowed(self, tenant: str, rule: str) -> bool:
        return bool(self._allow_rules) and (
            (tenant, rule) in self._allow_rules or ("*", rule) in self._allow_rules)

    def text_allowed(self, tenant: str, role: str, text: str) -> bool:
        """Is this exact text allow-listed in this role (for this tenant or every tenant)?"""
        if not self._allow_hashes:
            return False
        h = prompt_hash(text)
        return any((t, r, h) in self._allow_hashes
                   for t in (tenant, "*") for r in (role, "*"))

    @property
    def active_bans(self) -> int:
        now = time.time()
        return sum(1 for b in self._bans.values() if b.active(now))

    # -- writes ----------------------------------------------------------------------------

    async def strike(self, subjects: list[str], reason: str) -> list[Ban]:
        """Count a block against each subject; ban those over the limit. Returns new bans."""
        s = self.settings
        new: list[Ban] = []
        for c in subjects:
            n = await self.kv.incr(STRIKE + c, 1, ttl_s=s.strike_window_s)
            if n >= s.strikes and self.banned([c]) is None:
                why = f"{n} blocks in {s.strike_window_s:g}s; last: {reason}"
                new.append(await self.ban(c, why, s.ban_s))
        return new

    async def watch_strike(self, subject: str, reason: str) -> Ban | None:
        """Count an anonymous block against a key; past the limit the key is watched
        (reported and rate-limited) for ``ban_s``. Returns the new watch, if any."""
        s = self.settings
        n = await self.kv.incr(WATCH_STRIKE + subject, 1, ttl_s=s.strike_window_s)
        if n < s.strikes or self.watched(subject) is not None:
            return None
        now = time.time()
        why = (f"{n} blocks in {s.strike_window_s:g}s without an end-user id; last: "
               f"{reason}")
        w = Ban(subject, why, now, now + s.ban_s)
        await self.kv.set(WATCH + subject, orjson.dumps(
            {"reason": why, "since": now, "until": w.until}).decode(), ttl_s=s.ban_s)
        self._watches[subject] = w
        await self._changed()
        log.warning("firewall: %s is watched (rate-limited, not banned): %s",
                    describe(subject), why)
        return w

    async def within_rate(self, subject: str, per_minute: int) -> bool:
        """Count one request of a watched subject; False past ``per_minute`` in the last
        60 s. A sliding window: this minute's count plus the previous minute's, weighted by
        how much of it is still inside the last 60 s (a plain per-minute counter let twice
        the limit through around each minute boundary)."""
        now = time.time()
        minute = int(now // 60)
        n = await self.kv.incr(f"{RATE}{subject}:{minute}", 1, ttl_s=120)
        if n > per_minute:
            return False
        before = await self.kv.get(f"{RATE}{subject}:{minute - 1}")
        carried = int(before) * (1.0 - (now % 60) / 60) if before else 0.0
        return n + carried <= per_minute

    async def ban(self, client: str, reason: str, duration_s: float | None) -> Ban:
        now = time.time()
        ban = Ban(client, reason, now, None if duration_s is None else now + duration_s)
        record = {"reason": reason, "since": now, "until": ban.until}
        await self.kv.set(BAN + client, orjson.dumps(record).decode(), ttl_s=duration_s)
        self._bans[client] = ban
        await self._changed()
        return ban

    async def unban(self, client: str) -> bool:
        """Lift a ban or a watch (and reset the subject's strikes)."""
        existed = await self.kv.delete(BAN + client)
        existed = await self.kv.delete(WATCH + client) or existed
        await self.kv.delete(STRIKE + client)
        await self.kv.delete(WATCH_STRIKE + client)
        self._bans.pop(client, None)
        self._watches.pop(client, None)
        await self._changed()
        return existed

    async def list_bans(self) -> list[Ban]:
        await self.refresh()
        now = time.time()
        return sorted((b for b in self._bans.values() if b.active(now)),
                      key=lambda b: b.since, reverse=True)

    async def list_watches(self) -> list[Ban]:
        await self.refresh()
        now = time.time()
        return sorted((b for b in self._watches.values() if b.active(now)),
                      key=lambda b: b.since, reverse=True)

    async def allow_rule(self, rule: str, tenant: str = "*") -> None:
        await self.kv.set(f"{ALLOW_RULE}{tenant}:{rule}", "1")
        self._allow_rules.add((tenant, rule))
        await self._changed()

    async def allow_text(self, text: str, role: str = "user", tenant: str = "*") -> str:
        """Allow one exact text in one role (user, tool, tool_result...) for a tenant."""
        digest = prompt_hash(text)
        await self.kv.set(f"{ALLOW_HASH}{tenant}:{role}:{digest}", "1")
        self._allow_hashes.add((tenant, role, digest))
        await self._changed()
        return digest

    async def list_allows(self) -> dict[str, list[dict[str, str]]]:
        await self.refresh()
        return {
            "rules": [{"tenant": t, "rule": r} for t, r in sorted(self._allow_rules)],
            "texts": [{"tenant": t, "role": r, "sha256": h}
                      for t, r, h in sorted(self._allow_hashes)],
        }
