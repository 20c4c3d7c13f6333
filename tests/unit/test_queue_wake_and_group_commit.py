"""keel.jobs.queue_wake (when a DBOS queue thread looks again) and
keel.storage.group_commit (writes that arrive together share one transaction), on real
threads and a real SQLite file."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, event, insert

from keel.jobs.queue_wake import QueueWakes, WakeableStop
from keel.storage.group_commit import GroupCommit
from keel.storage.sql import Database


def test_a_woken_queue_thread_looks_at_once_and_stops_when_dbos_stops() -> None:
    stop, wakes = threading.Event(), QueueWakes()
    waiter = WakeableStop(stop, wakes.event("q"))
    threading.Timer(0.05, wakes.wake, args=("q",)).start()
    t0 = time.monotonic()
    assert waiter.wait(30) is False  # woken: poll now, not stopping
    assert time.monotonic() - t0 < 5
    assert waiter.wait(0.01) is False  # no wake: the interval ends as usual
    threading.Timer(0.05, stop.set).start()
    t0 = time.monotonic()
    assert waiter.wait(30) is True and waiter.is_set()  # DBOS stopping ends the wait soon
    assert time.monotonic() - t0 < 5


def test_a_freed_slot_wakes_the_queue_only_while_work_may_be_left() -> None:
    wakes = QueueWakes()
    ev = wakes.event("q")
    wakes.released("q")  # nothing known yet: look
    assert ev.is_set()
    ev.clear()
    wakes.claimed("q", took=0, stopped_by_limit=False)  # the queue was empty
    wakes.released("q")
    assert not ev.is_set()  # a burst of endings costs no claims
    wakes.claimed("q", took=0, stopped_by_limit=True)  # full: work may be waiting
    wakes.released("q")
    assert ev.is_set()
    ev.clear()
    wakes.claimed("q", took=0, stopped_by_limit=False)
    wakes.wake("q")  # a local enqueue: something new
    ev.clear()
    wakes.released("q")
    assert ev.is_set()


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'g.db'}")
    return database


T = Table("t", MetaData(), Column("id", Integer, primary_key=True),
          Column("v", String(10), nullable=False))


async def test_concurrent_writes_share_commits_and_only_a_failing_one_raises(
        db: Database) -> None:
    T.metadata.create_all(db.engine)
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda conn: commits.append(1))
    group = GroupCommit(db)

    def write(i: int, value: str | None) -> Callable[[Connection], int]:
        def fn(c: Connection) -> int:
            c.execute(insert(T).values(id=i, v=value))  # None violates NOT NULL
            return i
        return fn

    results = await asyncio.gather(*(group.run(write(i, "x")) for i in range(40)))
    assert results == list(range(40))
    assert len(commits) < 40  # grouped: far fewer commits than writes
    out = await asyncio.gather(group.run(write(100, "ok")), group.run(write(101, None)),
                               group.run(write(102, "ok")), return_exceptions=True)
    assert out[0] == 100 and out[2] == 102 and isinstance(out[1], Exception)
    rows = db.transaction(lambda c: sorted(r[0] for r in c.execute(T.select())))
    assert rows == [*range(40), 100, 102]  # the failing write left nothing behind
    db.dispose()


def test_the_lane_column_is_added_to_a_database_from_before_lanes(db: Database) -> None:
    from sqlalchemy import inspect, text

    from keel.reasoning.store import MIGRATIONS
    from keel.storage.migrations import migrate

    db.transaction(lambda c: c.execute(text(  # reasoning_samples as 0001 created it
        "CREATE TABLE reasoning_samples (run_id VARCHAR(40), idx INTEGER, anon_id "
        "VARCHAR(8), model VARCHAR(200), status VARCHAR(16), PRIMARY KEY (run_id, idx))")))
    db.transaction(lambda c: c.execute(text(
        "CREATE TABLE keel_migrations (id VARCHAR(128) PRIMARY KEY, applied_at FLOAT)")))
    db.transaction(lambda c: c.execute(text(
        "INSERT INTO keel_migrations VALUES ('reasoning/0001_tables', 0)")))
    assert migrate(db, MIGRATIONS) == ["reasoning/0002_sample_lane",
                                       "reasoning/0003_run_end_user"]
    cols = db.transaction(lambda c: {x["name"] for x in inspect(c).get_columns(
        "reasoning_samples")})
    assert "lane" in cols
    assert migrate(db, MIGRATIONS) == []  # applied once
    db.dispose()


def test_a_fresh_database_gets_the_lane_column_from_the_first_migration(db: Database) -> None:
    from sqlalchemy import inspect

    from keel.reasoning.store import MIGRATIONS
    from keel.storage.migrations import migrate

    assert migrate(db, MIGRATIONS) == ["reasoning/0001_tables", "reasoning/0002_sample_lane",
                                       "reasoning/0003_run_end_user"]
    cols = db.transaction(lambda c: {x["name"] for x in inspect(c).get_columns(
        "reasoning_samples")})
    assert "lane" in cols
    db.dispose()


def test_the_end_user_column_is_added_to_runs_from_before_it(db: Database) -> None:
    from sqlalchemy import inspect, text

    from keel.reasoning.store import MIGRATIONS
    from keel.storage.migrations import migrate

    assert migrate(db, MIGRATIONS[:2]) == ["reasoning/0001_tables",
                                           "reasoning/0002_sample_lane"]
    db.transaction(lambda c: c.execute(text(  # runs as they were before end users
        "ALTER TABLE reasoning_runs DROP COLUMN end_user")))
    assert migrate(db, MIGRATIONS) == ["reasoning/0003_run_end_user"]
    cols = db.transaction(lambda c: {x["name"] for x in inspect(c).get_columns(
        "reasoning_runs")})
    assert "end_user" in cols
    db.dispose()
