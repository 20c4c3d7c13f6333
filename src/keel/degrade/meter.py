"""Rolling-window counters of metered spend and invocations, summed over all replicas.

The hot path adds to an in-process dict (no I/O). Once a second each replica adds its
deltas to per-bucket counters in the KV port (``dg:m:<metric>:<bucket>:<tenant>``, one
``incr`` per metric, bucket and active tenant, expiring after the longest window), so a
window sum read from the KV covers every replica sharing it. Spend is counted in
nano-dollars so the integer counters lose nothing that matters.
"""

from __future__ import annotations

import time

from keel.ports.kv import KV

PREFIX = "dg:m:"
NANO = 1_000_000_000
GLOBAL = "*"


class RollingMeter:
    def __init__(self, kv: KV, *, bucket_s: float, retention_s: float) -> None:
        self.kv = kv
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        self._pending: dict[tuple[str, str], int] = {}
        self._local: dict[str, float] = {"usd": 0.0, "inv": 0.0}  # this process, all time

    def add(self, tenant: str, usd: float) -> None:
        p = self._pending
        nano = round(usd * NANO)
        for scope in (GLOBAL, tenant):
            p[("inv", scope)] = p.get(("inv", scope), 0) + 1
            if nano:
                p[("usd", scope)] = p.get(("usd", scope), 0) + nano
        self._local["inv"] += 1
        self._local["usd"] += usd

    async def flush(self, now: float | None = None) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        bucket = int((now or time.time()) // self.bucket_s)
        ttl = self.retention_s + 2 * self.bucket_s
        for (metric, scope), amount in pending.items():
            await self.kv.incr(f"{PREFIX}{metric}:{bucket}:{scope}", amount, ttl_s=ttl)

    async def totals(self, window_s: float, now: float | None = None
                     ) -> dict[str, dict[str, float]]:
        """``{"usd"|"inv": {scope: total over the last window_s}}``; scope ``*`` is global."""
        now = now or time.time()
        first = int((now - window_s) // self.bucket_s) + 1  # whole buckets inside the window
        out: dict[str, dict[str, float]] = {"usd": {}, "inv": {}}
        for key in await self.kv.keys(PREFIX):
            metric, bucket, scope = key[len(PREFIX):].split(":", 2)
            if metric not in out or int(bucket) < first:
                continue
            raw = await self.kv.get(key)
            if raw is None:
                continue
            value = int(raw) / NANO if metric == "usd" else float(raw)
            out[metric][scope] = out[metric].get(scope, 0.0) + value
        return out
