"""The tool decision log: one row per authorization.

Rows are written off the hot path in batches (every ``flush_interval_s``). An allowed call
of a money tool (one with ``spend_args``) or one that needed an approval is written
*before* the tool runs (outcome ``started``, filled in afterwards), so a crash can never
leave such a call that happened without its row.

Rows keep the principal, the action (tool), a SHA-256 of the canonical arguments, the
decision, the deciding policy ids and the latency. With ``tools.policy.log_arguments`` the
full Cedar context is kept too, which is what ``keel policy shadow`` replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)

from keel.storage.migrations import Migration
from keel.storage.sql import Database

log = logging.getLogger("keel.tools.decisions")

meta = MetaData()
tool_decisions = Table(
    "tool_decisions",
    meta,
    Column("id", String(40), primary_key=True),
    Column("ts", Float, nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(128), nullable=False),
    Column("session", String(128)),
    Column("action", String(200), nullable=False),
    Column("args_hash", String(64), nullable=False),
    Column("context", Text),
    Column("decision", String(16), nullable=False),  # allow | deny | approval
    Column("policy_ids", Text, nullable=False),
    Column("reason", Text),
    Column("latency_us", Float, nullable=False),
    Column("policy_version", Integer),
    # ok | tool_error | denied | held | approved | rejected | blocked (by the firewall)
    Column("outcome", String(32)),
    Index("tool_decisions_ts", "ts"),
    Index("tool_decisions_tenant_ts", "tenant", "ts"),
)
_COLUMNS = tuple(c.name for c in tool_decisions.columns)
_WRITTEN = "_written"  # a row key (not a column): the row is in the table already

MIGRATIONS = [
    Migration("tools/0001_decisions", lambda c: meta.create_all(c, tables=[tool_decisions])),
]


def args_hash(arguments: Any) -> str:
    try:
        raw = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        raw = repr(arguments).encode()
    return hashlib.sha256(raw).hexdigest()


class DecisionLog:
    def __init__(self, db: Database, *, flush_interval_s: float = 0.2, batch_size: int = 200,
                 queue_limit: int = 50_000) -> None:
        self.db = db
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.queue_limit = queue_limit
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(maxsize=self.queue_limit)
        self._task = asyncio.create_task(self._run(), name="keel-tool-decisions")

    async def write_ahead(self, row: dict[str, Any]) -> None:
        """Write ``row`` now (before the tool runs); a later :meth:`submit` of the same row
        updates its outcome and reason."""
        if self._queue is None:
            self.write_now([row])
        else:
            await asyncio.to_thread(self.write_now, [row])
        row[_WRITTEN] = True

    def submit(self, row: dict[str, Any]) -> None:
        if self._queue is None:
            self.write_now([row])  # not started (CLI, tests without a loop task)
            return
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1

    def write_now(self, rows: list[dict[str, Any]]) -> None:
        mark = "?" if self.db.dialect == "sqlite" else "%s"
        new = [r for r in rows if not r.get(_WRITTEN)]
        done = [r for r in rows if r.get(_WRITTEN)]
        insert = (f"INSERT INTO tool_decisions ({', '.join(_COLUMNS)}) "
                  f"VALUES ({', '.join([mark] * len(_COLUMNS))})")
        update = f"UPDATE tool_decisions SET outcome = {mark}, reason = {mark} WHERE id = {mark}"

        def write(c: Connection) -> None:
            if new:
                c.exec_driver_sql(insert, [tuple(r.get(col) for col in _COLUMNS) for r in new])
            if done:
                c.exec_driver_sql(update, [(r.get("outcome"), r.get("reason"), r["id"])
                                           for r in done])

        self.db.transaction(write)

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            self._pending.append(await self._queue.get())
            await asyncio.sleep(self.flush_interval_s)
            async with self._lock:
                await self._drain()

    async def _drain(self) -> None:
        assert self._queue is not None
        batch, self._pending = self._pending, []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if not batch:
            return
        try:
            await asyncio.to_thread(self.write_now, batch)
        except Exception:  # the log must never take the gateway down
            log.exception("tool decision log: failed to write %d rows", len(batch))

    async def flush(self) -> None:
        """Write what is queued. Callable from any event loop: the queue and lock belong to
        the gateway's loop, so a flush from elsewhere (a test, a second thread) runs there
        (awaiting that loop's lock from another loop could wait forever)."""
        if self._queue is None:
            return
        owner = self._loop
        if owner is not None and owner is not asyncio.get_running_loop() and owner.is_running():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.flush(), owner))
            return
        async with self._lock:
            await self._drain()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        self._queue = None


@dataclass(frozen=True)
class DecisionFilter:
    tenant: str | None = None
    since: float | None = None
    decision: str | None = None
    limit: int = 100


def query_decisions(c: Connection, f: DecisionFilter) -> list[dict[str, Any]]:
    q = select(tool_decisions).order_by(tool_decisions.c.ts.desc()).limit(f.limit)
    if f.tenant:
        q = q.where(tool_decisions.c.tenant == f.tenant)
    if f.since is not None:
        q = q.where(tool_decisions.c.ts >= f.since)
    if f.decision:
        q = q.where(tool_decisions.c.decision == f.decision)
    out = []
    for r in c.execute(q):
        d = {str(k): v for k, v in r._mapping.items()}  # plain str keys (orjson)
        d["policy_ids"] = orjson.loads(d["policy_ids"] or "[]")
        out.append(d)
    return out
