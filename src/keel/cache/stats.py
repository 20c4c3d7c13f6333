"""Cache outcomes and savings: Prometheus counters now, hourly rows in SQL for charts.

Each lookup outcome is added to an in-memory bucket (hour, tenant, namespace); a background
task folds the buckets into the ``cache_stats`` table every ``flush_s`` seconds, so the hot
path never waits on the database. Savings are what a hit did not pay: the cached answer's
prompt and completion tokens at the model table's current prices.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    func,
    select,
    update,
)

from keel.background import Periodic
from keel.storage.migrations import Migration
from keel.storage.sql import Database

log = logging.getLogger("keel.cache")
OUTCOMES = ("hit_exact", "hit_semantic", "miss", "bypass", "rejected", "error", "stored")

meta = MetaData()
cache_stats = Table(
    "cache_stats", meta,
    Column("hour", Float, primary_key=True),
    Column("tenant", String(128), primary_key=True),
    Column("namespace", String(64), primary_key=True),
    *(Column(o, Integer, nullable=False, default=0) for o in OUTCOMES),
    Column("tokens_saved", Integer, nullable=False, default=0),
    Column("usd_saved", Float, nullable=False, default=0.0),
)
MIGRATIONS = [Migration("cache/0001_stats", lambda c: meta.create_all(c, tables=[cache_stats]))]


@dataclass
class _Bucket:
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tokens_saved: int = 0
    usd_saved: float = 0.0


class CacheStats:
    def __init__(self, db: Database, registry: CollectorRegistry, flush_s: float = 2.0) -> None:
        self.db = db
        self.flush_s = flush_s
        self._buckets: dict[tuple[float, str, str], _Bucket] = {}
        self._flusher = Periodic("keel-cache-stats", flush_s, self.flush,
                                 error="cache stats flush failed", logger=log)
        self.requests = Counter("keel_cache_requests", "Cache lookups by outcome",
                                ["outcome"], registry=registry)
        self.rejections = Counter("keel_cache_verifier_rejections",
                                  "Semantic hits refused by the verifier", ["reason"],
                                  registry=registry)
        self.saved_usd = Counter("keel_cache_saved_usd", "USD not spent thanks to cache hits",
                                 registry=registry)
        self.saved_tokens = Counter("keel_cache_saved_tokens",
                                    "Tokens not processed thanks to cache hits",
                                    registry=registry)
        self.judge_usd = Counter("keel_cache_judge_usd", "USD spent on judging semantic hits",
                                 registry=registry)

    def record(self, tenant: str, namespace: str, outcome: str, *, tokens: int = 0,
               usd: float = 0.0) -> None:
        self.requests.labels(outcome).inc()
        hour = float(int(time.time() // 3600) * 3600)
        b = self._buckets.get((hour, tenant, namespace))
        if b is None:
            b = self._buckets[(hour, tenant, namespace)] = _Bucket()
        b.counts[outcome] += 1
        if tokens or usd:
            b.tokens_saved += tokens
            b.usd_saved += usd
            self.saved_tokens.inc(tokens)
            self.saved_usd.inc(usd)

    def charge_judge(self, tenant: str, namespace: str, usd: float) -> None:
        """A judge call's cost, taken off the USD saved (hits pay for their judging)."""
        if usd <= 0:
            return
        hour = float(int(time.time() // 3600) * 3600)
        b = self._buckets.get((hour, tenant, namespace))
        if b is None:
            b = self._buckets[(hour, tenant, namespace)] = _Bucket()
        b.usd_saved -= usd
        self.judge_usd.inc(usd)

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason.split(":")[0]).inc()

    # -- persistence ------------------------------------------------------------------------

    def start(self) -> None:
        self._flusher.interval_s = self.flush_s
        self._flusher.start()  # a failed round keeps its buckets for the next one

    async def flush(self) -> None:
        buckets, self._buckets = self._buckets, {}
        if buckets:
            try:
                await self.db.run(lambda c: _fold(c, buckets))
            except Exception:
                for k, b in buckets.items():  # keep them for the next round
                    mine = self._buckets.setdefault(k, _Bucket())
                    for o, n in b.counts.items():
                        mine.counts[o] += n
                    mine.tokens_saved += b.tokens_saved
                    mine.usd_saved += b.usd_saved
                raise

    async def aclose(self) -> None:
        await self._flusher.stop()
        with contextlib.suppress(Exception):
            await self.flush()


def _fold(conn: Connection, buckets: dict[tuple[float, str, str], _Bucket]) -> None:
    t = cache_stats
    for (hour, tenant, ns), b in buckets.items():
        where = and_(t.c.hour == hour, t.c.tenant == tenant, t.c.namespace == ns)
        values: dict[str, Any] = {o: getattr(t.c, o) + b.counts.get(o, 0) for o in OUTCOMES}
        values["tokens_saved"] = t.c.tokens_saved + b.tokens_saved
        values["usd_saved"] = t.c.usd_saved + b.usd_saved
        if conn.execute(update(t).where(where).values(**values)).rowcount == 0:
            row: dict[str, Any] = {o: b.counts.get(o, 0) for o in OUTCOMES}
            conn.execute(t.insert().values(hour=hour, tenant=tenant, namespace=ns,
                                           tokens_saved=b.tokens_saved,
                                           usd_saved=b.usd_saved, **row))


def summary(conn: Connection, since: float = 0.0, tenant: str | None = None) -> dict[str, Any]:
    """Totals since ``since`` (epoch seconds): outcomes, hit rate, tokens and USD saved."""
    t = cache_stats
    cols = [func.coalesce(func.sum(getattr(t.c, o)), 0) for o in OUTCOMES]
    q = select(*cols, func.coalesce(func.sum(t.c.tokens_saved), 0),
               func.coalesce(func.sum(t.c.usd_saved), 0.0)).where(t.c.hour >= since)
    if tenant is not None:
        q = q.where(t.c.tenant == tenant)
    row = conn.execute(q).one()
    out: dict[str, Any] = {o: int(v) for o, v in zip(OUTCOMES, row[: len(OUTCOMES)],
                                                      strict=True)}
    lookups = out["hit_exact"] + out["hit_semantic"] + out["miss"] + out["rejected"]
    out["hit_rate"] = round((out["hit_exact"] + out["hit_semantic"]) / lookups, 4) if lookups \
        else 0.0
    out["tokens_saved"] = int(row[-2])
    out["usd_saved"] = round(float(row[-1]), 6)
    return out


def by_hour(conn: Connection, since: float, tenant: str | None = None) -> list[dict[str, Any]]:
    t = cache_stats
    q = (select(t.c.hour, func.sum(t.c.hit_exact + t.c.hit_semantic),
                func.sum(t.c.miss + t.c.rejected), func.sum(t.c.usd_saved))
         .where(t.c.hour >= since).group_by(t.c.hour).order_by(t.c.hour))
    if tenant is not None:
        q = q.where(t.c.tenant == tenant)
    rows = conn.execute(q).all()
    return [{"hour": float(h), "hits": int(hits or 0), "misses": int(m or 0),
             "usd_saved": float(usd or 0.0)} for h, hits, m, usd in rows]
