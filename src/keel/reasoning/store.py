"""Runs, their samples and their event log (SQL Core, SQLite or Postgres).

The event log is what progress views read (SSE, the CLI, the console): every sample,
retry, judge call and verdict is one row, so anyone can see which answers were rejected
and why, also after the run, also from another process than the one that ran it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
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
    and_,
    bindparam,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)

from keel.reasoning.calls import Reply
from keel.storage.group_commit import GroupCommit
from keel.storage.migrations import Migration
from keel.storage.sql import Database

meta = MetaData()
runs = Table(
    "reasoning_runs", meta,
    Column("id", String(40), primary_key=True),
    Column("reasoner", String(64), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("agent", String(200)),
    Column("key_id", String(64), nullable=False),
    Column("messages", Text, nullable=False),
    Column("n", Integer, nullable=False),
    Column("budget_usd", Float, nullable=False),
    Column("status", String(16), nullable=False),  # queued|running|succeeded|failed
    Column("phase", String(24), nullable=False),  # sampling|voting|judging|done
    Column("answer", Text),
    Column("citations", Text),  # JSON [{"id", "insight", "sample"}]
    Column("error", Text),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("judge_calls", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
    # who asked (the firewall's end-user id): every sample and judge call runs as them
    Column("end_user", String(200)),
    Index("ix_reasoning_runs_tenant", "tenant", "created_at"),
)
samples = Table(
    "reasoning_samples", meta,
    Column("run_id", String(40), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("anon_id", String(8), nullable=False),
    Column("model", String(200), nullable=False),
    # pending|running (claimed by a lane)|ok|failed|cancelled|skipped
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("text", Text),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("request_id", String(64)),
    Column("error", Text),
    Column("latency_ms", Float),
    Column("verdict", String(16)),  # cited|kept|rejected|unjudged
    Column("reason", Text),  # why it was rejected (the judge's words) or dropped
    Column("lane", Integer),  # the lane workflow that claimed it (keel.reasoning.durable)
)
events = Table(
    "reasoning_events", meta,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(24), nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_reasoning_events_run", "run_id", "seq"),
)



def _add_lane(c: Connection) -> None:
    if "lane" not in {col["name"] for col in inspect(c).get_columns("reasoning_samples")}:
        c.execute(text("ALTER TABLE reasoning_samples ADD COLUMN lane INTEGER"))


def _add_end_user(c: Connection) -> None:
    insp = inspect(c)
    if insp.has_table("reasoning_runs") and "end_user" not in {
            col["name"] for col in insp.get_columns("reasoning_runs")}:
        c.execute(text("ALTER TABLE reasoning_runs ADD COLUMN end_user VARCHAR(200)"))


MIGRATIONS = [
    Migration("reasoning/0001_tables",
              lambda c: meta.create_all(c, tables=[runs, samples, events])),
    Migration("reasoning/0002_sample_lane", _add_lane),
    Migration("reasoning/0003_run_end_user", _add_end_user),
]

TERMINAL = ("succeeded", "failed")
UNFINISHED = ("pending", "running")  # sample statuses a run still waits for

# The per-sample statements are built once: SQLAlchemy then reuses their compiled form,
# where a statement built per call costs ~0.2 ms of CPU to generate and look up.
_b = bindparam
_GET_RUN = select(runs).where(runs.c.id == _b("b_run"))
_RUN_STATUS = select(runs.c.status).where(runs.c.id == _b("b_run"))
_MINE = (select(samples).where(and_(samples.c.run_id == _b("b_run"),
                                    samples.c.lane == _b("b_lane"),
                                    samples.c.status == "running"))
         .order_by(samples.c.idx).limit(1))
_NEXT = select(func.min(samples.c.idx)).where(and_(samples.c.run_id == _b("b_run"),
                                                   samples.c.status == "pending"))
_others = samples.alias("others")
_TAKE = update(samples).where(and_(  # the lowest pending sample of a run still running
    samples.c.run_id == _b("b_run"), samples.c.status == "pending",
    samples.c.idx == select(func.min(_others.c.idx)).where(and_(
        _others.c.run_id == _b("b_run"), _others.c.status == "pending")).scalar_subquery(),
    select(runs.c.id).where(and_(runs.c.id == _b("b_run"),
                                 runs.c.status.not_in(TERMINAL))).exists(),
)).values(status="running", lane=_b("b_lane")).returning(*samples.c)
_FINISHED = select(samples.c.idx, samples.c.status, samples.c.text).where(and_(
    samples.c.run_id == _b("b_run"), samples.c.status.not_in(UNFINISHED)))
_FINISHED_AMONG = _FINISHED.where(samples.c.idx.in_(_b("b_among", expanding=True)))
AMONG_MAX = 500  # beyond this many indices, read every finished row (bind limits)
_FINISH = update(samples).where(and_(
    samples.c.run_id == _b("b_run"), samples.c.idx == _b("b_idx"))).values(
    status="ok", attempts=_b("b_attempts"), text=_b("b_text"),
    prompt_tokens=_b("b_prompt"), completion_tokens=_b("b_completion"),
    cost_usd=_b("b_cost"), request_id=_b("b_request"), latency_ms=_b("b_latency"))
_SPEND = update(runs).where(runs.c.id == _b("b_run")).values(
    cost_usd=runs.c.cost_usd + _b("b_cost"),
    prompt_tokens=runs.c.prompt_tokens + _b("b_prompt"),
    completion_tokens=runs.c.completion_tokens + _b("b_completion"),
    judge_calls=runs.c.judge_calls + _b("b_judges"))
_VERDICT = update(samples).where(and_(
    samples.c.run_id == _b("b_run"), samples.c.idx == _b("b_idx"))).values(
    verdict=_b("b_verdict"), reason=_b("b_reason"))
_EVENT = insert(events).values(run_id=_b("b_run"), at=_b("b_at"), kind=_b("b_kind"),
                               data=_b("b_data"))


def new_run_id() -> str:
    return "rsn_" + secrets.token_hex(10)


@dataclass
class Run:
    id: str
    reasoner: str
    tenant: str
    agent: str | None
    key_id: str
    messages: list[dict[str, Any]]
    n: int
    budget_usd: float
    status: str
    phase: str
    answer: str | None
    citations: list[dict[str, Any]]
    error: str | None
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    judge_calls: int
    created_at: float
    finished_at: float | None
    samples: list[dict[str, Any]] = field(default_factory=list)
    end_user: str | None = None  # who asked; every sample and judge call runs as them

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def public(self, *, with_samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "object": "reasoning.run", "reasoner": self.reasoner,
            "status": self.status, "phase": self.phase, "n": self.n,
            "budget_usd": self.budget_usd, "answer": self.answer,
            "citations": self.citations, "error": self.error,
            "usage": {"prompt_tokens": self.prompt_tokens,
                      "completion_tokens": self.completion_tokens,
                      "total_tokens": self.prompt_tokens + self.completion_tokens},
            "cost_usd": round(self.cost_usd, 10), "judge_calls": self.judge_calls,
            "created_at": self.created_at, "finished_at": self.finished_at,
            "tenant": self.tenant, "end_user": self.end_user,
        }
        counts: dict[str, int] = {}
        for s in self.samples:
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        out["samples_by_status"] = counts
        if with_samples:
            out["samples"] = self.samples
        return out


def _run(row: Any) -> Run:
    return Run(id=row.id, reasoner=row.reasoner, tenant=row.tenant, agent=row.agent,
               key_id=row.key_id, messages=orjson.loads(row.messages), n=row.n,
               budget_usd=row.budget_usd, status=row.status, phase=row.phase,
               answer=row.answer, citations=orjson.loads(row.citations or "[]"),
               error=row.error, cost_usd=row.cost_usd or 0.0,
               prompt_tokens=row.prompt_tokens or 0,
               completion_tokens=row.completion_tokens or 0,
               judge_calls=row.judge_calls or 0, created_at=row.created_at,
               finished_at=row.finished_at, end_user=row.end_user)


def _sample(row: Any) -> dict[str, Any]:
    return {"index": row.idx, "id": row.anon_id, "model": row.model, "status": row.status,
            "attempts": row.attempts, "text": row.text,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens,
            "cost_usd": row.cost_usd, "request_id": row.request_id, "error": row.error,
            "latency_ms": row.latency_ms, "verdict": row.verdict, "reason": row.reason,
            "lane": row.lane}


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._group = GroupCommit(db)  # sample results and claims of a wave: one commit
        # wakes watchers: (run id, whether the run has just ended)
        self.on_write: Callable[[str, bool], None] = lambda run_id, ended: None

    async def create(self, run: Run, anon_ids: list[str], models: list[str]) -> None:
        def tx(c: Connection) -> None:
            c.execute(insert(runs).values(
                id=run.id, reasoner=run.reasoner, tenant=run.tenant, agent=run.agent,
                key_id=run.key_id, messages=orjson.dumps(run.messages).decode(), n=run.n,
                budget_usd=run.budget_usd, status=run.status, phase=run.phase,
                cost_usd=0.0, prompt_tokens=0, completion_tokens=0, judge_calls=0,
                created_at=run.created_at, end_user=run.end_user))
            c.execute(insert(samples), [
                {"run_id": run.id, "idx": i, "anon_id": anon_ids[i], "model": models[i],
                 "status": "pending", "attempts": 0, "prompt_tokens": 0,
                 "completion_tokens": 0, "cost_usd": 0.0} for i in range(run.n)])
            _event(c, run.id, "created", {"n": run.n, "reasoner": run.reasoner})

        await self.db.run(tx)
        self.on_write(run.id, False)

    async def get(self, run_id: str, *, with_samples: bool = True) -> Run | None:
        def q(c: Connection) -> Run | None:
            row = c.execute(_GET_RUN, {"b_run": run_id}).first()
            if row is None:
                return None
            run = _run(row)
            if with_samples:
                run.samples = [_sample(r) for r in c.execute(
                    select(samples).where(samples.c.run_id == run_id)
                    .order_by(samples.c.idx))]
            return run

        return await self.db.run(q)

    async def sample(self, run_id: str, idx: int) -> dict[str, Any] | None:
        def q(c: Connection) -> dict[str, Any] | None:
            row = c.execute(select(samples).where(
                and_(samples.c.run_id == run_id, samples.c.idx == idx))).first()
            return None if row is None else _sample(row)

        return await self.db.run(q)

    async def finished(self, run_id: str,
                       among: Collection[int]) -> list[tuple[int, str, str]]:
        """(index, status, text) of the samples ``among`` that are no longer pending or
        running."""
        def q(c: Connection) -> list[tuple[int, str, str]]:
            rows = (c.execute(_FINISHED_AMONG, {"b_run": run_id, "b_among": list(among)})
                    if len(among) <= AMONG_MAX else c.execute(_FINISHED, {"b_run": run_id}))
            return [(r.idx, r.status, r.text or "") for r in rows]

        return await self.db.run(q)

    async def claim(self, run_id: str, lane: int) -> dict[str, Any] | None:
        """The next sample lane ``lane`` runs: the one it had claimed before a crash (its
        answer never arrived), else the lowest pending one, now ``running`` under this
        lane; None when nothing is left or the run has ended."""
        return await self._group.run(lambda c: _claim(c, run_id, lane, resume=True))

    async def recent(self, tenant: str | None = None, limit: int = 50) -> list[Run]:
        def q(c: Connection) -> list[Run]:
            stmt = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
            if tenant is not None:
                stmt = stmt.where(runs.c.tenant == tenant)
            return [_run(r) for r in c.execute(stmt)]

        return await self.db.run(q)

    async def unfinished(self) -> list[str]:
        def q(c: Connection) -> list[str]:
            return list(c.execute(select(runs.c.id).where(
                runs.c.status.in_(("queued", "running")))).scalars())

        return await self.db.run(q)

    async def update_run(self, run_id: str, event: tuple[str, dict[str, Any]] | None = None,
                         **values: Any) -> None:
        if "citations" in values:
            values["citations"] = orjson.dumps(values["citations"]).decode()

        def tx(c: Connection) -> None:
            if values:
                c.execute(update(runs).where(runs.c.id == run_id).values(**values))
            if event is not None:
                _event(c, run_id, event[0], event[1])

        await self.db.run(tx)
        self.on_write(run_id, values.get("status") in TERMINAL)

    async def update_sample(self, run_id: str, idx: int,
                            event: tuple[str, dict[str, Any]] | None = None,
                            claim: int | None = None,
                            **values: Any) -> dict[str, Any] | None:
        """Update a sample (and log ``event``); with ``claim``, that lane's next sample is
        claimed in the same transaction and returned (see :meth:`claim`)."""
        def tx(c: Connection) -> dict[str, Any] | None:
            c.execute(update(samples).where(
                and_(samples.c.run_id == run_id, samples.c.idx == idx)).values(**values))
            if event is not None:
                _event(c, run_id, event[0], event[1])
            return None if claim is None else _claim(c, run_id, claim)

        out = await self._group.run(tx)
        self.on_write(run_id, False)
        return out

    async def finish_sample(self, run_id: str, idx: int, reply: Reply, attempts: int,
                            latency_ms: float, anon_id: str,
                            claim: int | None = None) -> dict[str, Any] | None:
        """A successful sample, its spend on the run and its event, in one transaction;
        with ``claim``, also that lane's next sample (see :meth:`claim`)."""
        def tx(c: Connection) -> dict[str, Any] | None:
            c.execute(_FINISH, {
                "b_run": run_id, "b_idx": idx, "b_attempts": attempts, "b_text": reply.text,
                "b_prompt": reply.prompt_tokens, "b_completion": reply.completion_tokens,
                "b_cost": reply.cost_usd, "b_request": reply.request_id,
                "b_latency": latency_ms})
            _spend(c, run_id, reply, 0)
            _event(c, run_id, "sample", {
                "index": idx, "id": anon_id, "attempts": attempts,
                "completion_tokens": reply.completion_tokens, "cost_usd": reply.cost_usd,
                "latency_ms": round(latency_ms, 1)})
            return None if claim is None else _claim(c, run_id, claim)

        out = await self._group.run(tx)
        self.on_write(run_id, False)
        return out

    async def judged(self, run_id: str, data: dict[str, Any]) -> None:
        """A judge call's verdict (kept for resuming: never asked twice) and its spend."""
        reply = Reply(data["text"], data["prompt_tokens"], data["completion_tokens"],
                      data["cost_usd"], data["request_id"])

        def tx(c: Connection) -> None:
            _spend(c, run_id, reply, 1)
            _event(c, run_id, "judge", data)

        await self.db.run(tx)
        self.on_write(run_id, False)

    async def verdicts(self, run_id: str, verdicts: dict[int, tuple[str, str | None]]) -> None:
        def tx(c: Connection) -> None:
            if verdicts:
                c.execute(_VERDICT, [{"b_run": run_id, "b_idx": idx, "b_verdict": verdict,
                                      "b_reason": reason}
                                     for idx, (verdict, reason) in verdicts.items()])

        await self.db.run(tx)
        self.on_write(run_id, False)

    async def event(self, run_id: str, kind: str, data: dict[str, Any]) -> None:
        await self.db.run(lambda c: _event(c, run_id, kind, data))
        self.on_write(run_id, False)

    async def events(self, run_id: str, after: int = 0) -> list[dict[str, Any]]:
        def q(c: Connection) -> list[dict[str, Any]]:
            rows = c.execute(select(events).where(
                and_(events.c.run_id == run_id, events.c.seq > after))
                .order_by(events.c.seq))
            return [{"seq": r.seq, "at": r.at, "kind": r.kind, **orjson.loads(r.data)}
                    for r in rows]

        return await self.db.run(q)


def _claim(c: Connection, run_id: str, lane: int, *,
           resume: bool = False) -> dict[str, Any] | None:
    """The lane's next sample (see :meth:`RunStore.claim`); ``resume``: first the one it
    had claimed before a crash."""
    if resume:
        status = c.execute(_RUN_STATUS, {"b_run": run_id}).scalar()
        if status is None or status in TERMINAL:
            return None
        row = c.execute(_MINE, {"b_run": run_id, "b_lane": lane}).first()
        if row is not None:
            return _sample(row)
    while True:
        row = c.execute(_TAKE, {"b_run": run_id, "b_lane": lane}).first()
        if row is not None:
            return _sample(row)
        # none left, the run ended, or (Postgres) a concurrent lane took it: look again
        if c.execute(_NEXT, {"b_run": run_id}).scalar() is None or c.execute(
                _RUN_STATUS, {"b_run": run_id}).scalar() in (None, *TERMINAL):
            return None


def _spend(c: Connection, run_id: str, reply: Reply, judge_calls: int) -> None:
    c.execute(_SPEND, {"b_run": run_id, "b_cost": reply.cost_usd,
                       "b_prompt": reply.prompt_tokens,
                       "b_completion": reply.completion_tokens, "b_judges": judge_calls})


def _event(c: Connection, run_id: str, kind: str, data: dict[str, Any]) -> None:
    c.execute(_EVENT, {"b_run": run_id, "b_at": time.time(), "b_kind": kind,
                       "b_data": orjson.dumps(data).decode()})
