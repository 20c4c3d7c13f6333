"""The request log: one row per request, written off the hot path in batches.

The gateway enqueues a record when a request completes (a non-blocking put); a
background task drains the queue every ``flush_interval_s`` or ``batch_size`` rows and
inserts them in one transaction. When the queue is full, records are dropped and counted
rather than slowing requests down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    func,
    select,
)

from keel.config import RequestLogSettings
from keel.gateway.context import RequestContext
from keel.storage.migrations import Migration
from keel.storage.sql import Database

log = logging.getLogger("keel.request_log")

meta = MetaData()
requests = Table(
    "request_log",
    meta,
    Column("id", String(40), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("route", String(20), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128)),
    Column("key_id", String(32)),
    Column("client_ip", String(64)),
    Column("model", String(200)),
    Column("provider", String(20)),
    Column("upstream_model", String(200)),
    Column("stream", Boolean, nullable=False, default=False),
    Column("status", Integer, nullable=False),
    Column("error_code", String(64)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("latency_ms", Float, nullable=False, default=0.0),
    Column("ttft_ms", Float),
    Column("request_body", Text),
    Column("response_text", Text),
    Column("decisions", Text),
    Index("request_log_ts", "ts"),
    Index("request_log_tenant_ts", "tenant", "ts"),
    Index("request_log_model_ts", "model", "ts"),
)

_COLUMNS = tuple(c.name for c in requests.columns)

MIGRATIONS = [
    Migration("metering/0001_request_log", lambda c: meta.create_all(c, tables=[requests])),
]

# Bodies are kept for debugging but capped so a huge prompt cannot bloat the log.
_MAX_STORED = 64 * 1024


def _cap(s: str) -> str:
    return s if len(s) <= _MAX_STORED else s[:_MAX_STORED] + "…[truncated]"


def _shorten(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…[truncated]"
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, limit) for v in value]
    return value


def stored_body(body: Any) -> str:
    """The request body as stored: whole when it fits in 64 KiB, otherwise still valid JSON
    with its strings shortened (never cut mid-JSON: readers parse it)."""
    raw = orjson.dumps(body).decode()
    limit = _MAX_STORED // 2
    while len(raw) > _MAX_STORED and limit >= 64:
        raw = orjson.dumps({"_keel_truncated": True, **_shorten(body, limit)}).decode() \
            if isinstance(body, dict) else orjson.dumps(_shorten(body, limit)).decode()
        limit //= 4
    if len(raw) > _MAX_STORED:  # huge numbers of keys or items: keep only the marker
        raw = orjson.dumps({"_keel_truncated": True}).decode()
    return raw


def record_from(ctx: RequestContext, *, store_bodies: bool = True) -> dict[str, Any]:
    return {
        "id": ctx.id,
        "ts": ctx.started_at,
        "route": ctx.route,
        "tenant": ctx.principal.tenant,
        "agent": ctx.principal.agent,
        "key_id": ctx.principal.key_id,
        "client_ip": ctx.client_ip,
        "model": ctx.model.name,
        "provider": ctx.model.provider,
        "upstream_model": ctx.model.upstream_model,
        "stream": ctx.stream,
        "status": ctx.status,
        "error_code": ctx.error.code if ctx.error else None,
        "prompt_tokens": ctx.usage.prompt_tokens,
        "completion_tokens": ctx.usage.completion_tokens,
        "cost_usd": ctx.cost_usd,
        "latency_ms": ctx.latency_ms or ctx.elapsed_ms(),
        "ttft_ms": ctx.ttft_ms,
        "request_body": stored_body(ctx.body) if store_bodies else None,
        "response_text": _cap(ctx.output_text) if store_bodies else None,
        "decisions": orjson.dumps(
            [{"stage": d.stage, "action": d.action, "detail": d.detail} for d in ctx.decisions]
        ).decode(),
    }


@dataclass
class LogStats:
    written: int = 0
    dropped: int = 0
    failed_batches: int = 0


class RequestLogWriter:
    def __init__(
        self,
        db: Database,
        settings: RequestLogSettings,
        *,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.stats = LogStats()
        self._on_drop = on_drop
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._batch: list[dict[str, Any]] = []
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.settings.queue_limit)
        self._task = asyncio.create_task(self._run(), name="keel-request-log")

    def _dropped(self, n: int) -> None:
        self.stats.dropped += n
        if self._on_drop:
            self._on_drop(n)

    def submit(self, ctx: RequestContext) -> None:
        if not self.settings.enabled or self._queue is None:
            return
        try:
            record = record_from(ctx, store_bodies=self.settings.store_bodies)
        except Exception:  # a record that cannot even be built is one drop, not a 500
            log.exception("request log: cannot record request %s", ctx.id)
            self._dropped(1)
            return
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._dropped(1)

    async def _run(self) -> None:
        assert self._queue is not None
        q = self._queue
        size = self.settings.batch_size
        while True:
            item = await q.get()
            self._batch.append(item)
            if q.qsize() + 1 < size:  # let a batch build up, unless one is ready already
                await asyncio.sleep(self.settings.flush_interval_s)
            async with self._lock:
                while len(self._batch) < size and not q.empty():
                    self._batch.append(q.get_nowait())
                batch, self._batch = self._batch, []
                if batch:
                    await self._write(batch)

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        # Straight to the driver's executemany: SQLAlchemy's per-row parameter processing
        # holds the GIL long enough to show up in the gateway's p99 (2.2 ms -> 0.7 ms).
        mark = "?" if self.db.dialect == "sqlite" else "%s"
        sql = (f"INSERT INTO request_log ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join([mark] * len(_COLUMNS))})")
        rows = [tuple(r[col] for col in _COLUMNS) for r in batch]
        try:
            await self.db.run(lambda c: c.exec_driver_sql(sql, rows))
            self.stats.written += len(batch)
            return
        except Exception:  # a failed batch must never take the gateway down
            self.stats.failed_batches += 1
            log.warning("request log: a batch of %d records failed; writing them one by one",
                        len(batch))
        # One unwritable record must not cost the others: retry each row on its own and
        # count only the rows that still fail as dropped.
        for row in rows:
            try:
                await self.db.run(partial(_insert_one, sql=sql, row=row))
                self.stats.written += 1
            except Exception:
                log.exception("request log: dropped the record of request %s", row[0])
                self._dropped(1)

    async def flush(self) -> None:
        """Write everything submitted so far, including a batch being collected or written.
        From another event loop (tests, threads) the flush runs on the writer's own loop."""
        if self._queue is None:
            return
        owner = self._loop
        if owner is not None and owner is not asyncio.get_running_loop() and owner.is_running():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.flush(), owner))
            return
        async with self._lock:
            while not self._queue.empty():
                self._batch.append(self._queue.get_nowait())
            batch, self._batch = self._batch, []
            if batch:
                await self._write(batch)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


def _insert_one(c: Connection, *, sql: str, row: tuple[Any, ...]) -> None:
    c.exec_driver_sql(sql, [row])


# -- queries used by the console and CLI --------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    tenant: str | None = None
    model: str | None = None
    status: str | None = None  # "ok" | "error" | None
    since: float | None = None
    search: str | None = None
    limit: int = 100
    offset: int = 0


def _row(r: Any) -> dict[str, Any]:
    # Column names come back as sqlalchemy's quoted_name (a str subclass) that orjson
    # refuses as a key: make them plain strings.
    return {str(k): v for k, v in r._asdict().items()}


def query_requests(c: Connection, f: LogFilter) -> list[dict[str, Any]]:
    q = select(requests).order_by(requests.c.ts.desc()).limit(f.limit).offset(f.offset)
    q = _apply(q, f)
    return [_row(r) for r in c.execute(q)]


def get_request(c: Connection, request_id: str) -> dict[str, Any] | None:
    row = c.execute(select(requests).where(requests.c.id == request_id)).first()
    return None if row is None else _row(row)


def _apply(q: Any, f: LogFilter) -> Any:
    if f.tenant:
        q = q.where(requests.c.tenant == f.tenant)
    if f.model:
        q = q.where(requests.c.model == f.model)
    if f.status == "ok":
        q = q.where(requests.c.status < 400)
    elif f.status == "error":
        q = q.where(requests.c.status >= 400)
    if f.since is not None:
        q = q.where(requests.c.ts >= f.since)
    if f.search:
        q = q.where(requests.c.request_body.contains(f.search, autoescape=True))
    return q


def spend_summary(c: Connection, f: LogFilter, group: str = "model") -> list[dict[str, Any]]:
    col = {"model": requests.c.model, "tenant": requests.c.tenant}[group]
    q = (
        select(
            col.label("key"),
            func.count().label("requests"),
            func.coalesce(func.sum(requests.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(requests.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(requests.c.cost_usd), 0.0).label("cost_usd"),
            func.avg(requests.c.latency_ms).label("avg_latency_ms"),
        )
        .group_by(col)
        .order_by(func.sum(requests.c.cost_usd).desc())
    )
    q = _apply(q, f)
    return [_row(r) for r in c.execute(q)]


def spend_by_hour(c: Connection, f: LogFilter) -> list[dict[str, Any]]:
    if c.dialect.name == "sqlite":  # no floor() unless built with math functions
        bucket = (cast(requests.c.ts / 3600, Integer) * 3600).label("hour")
    else:
        bucket = (func.floor(requests.c.ts / 3600) * 3600).label("hour")
    q = (
        select(bucket, func.count().label("requests"),
               func.coalesce(func.sum(requests.c.cost_usd), 0.0).label("cost_usd"))
        .group_by(bucket)
        .order_by(bucket)
    )
    q = _apply(q, f)
    return [_row(r) for r in c.execute(q)]
