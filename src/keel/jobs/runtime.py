"""The process's one DBOS runtime, shared by every capability with durable work.

DBOS is a per-process singleton with decorator registration. Capabilities hand
:meth:`JobRuntime.on_launch` a function that defines their workflows and steps (closures
over their own objects); the runtime calls every one right before ``DBOS.launch()``, which
happens lazily on first use, so an app that never runs durable work does not pay for
DBOS's start-up. Shutdown destroys instance *and* registry, so a test can build a fresh
app afterwards.

Queues are declared with :meth:`JobRuntime.queue`. A process dequeues only from the
queues it serves (``DBOS.listen_queues``): the gateway serves those declared with
``gateway=True``; a ``keel worker`` serves the ones it is told to. DBOS keeps queue
definitions in the system database, so without that filter the gateway would pick up
work meant for worker processes.

Three tunings, applied once per process (:func:`tune_dbos`):

* DBOS's SQLite notification listener issues one query per waiting workflow every poll
  (10,000 pending approvals = 10,000 queries per tick). keel replaces it with one query for
  all unconsumed messages per tick, and lets the engine wake it at once after a local send.
* The per-waiter fallback re-check (every 60 s, i.e. 166 queries/s with 10,000 waiters)
  runs every ``FALLBACK_RECHECK_S`` instead: messages are found by the listener anyway.
* Queue threads can be woken (:mod:`keel.jobs.queue_wake`): after a local enqueue
  (:meth:`JobRuntime.wake_queue`, :meth:`JobRuntime.enqueue_many`) and when a local
  workflow frees a slot, so a queue may poll rarely without delaying local work.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from keel.config import Settings
from keel.errors import ConfigError
from keel.jobs.batch_enqueue import BatchEnqueuer
from keel.jobs.executors import ExecutorLease
from keel.jobs.queue_wake import QueueWakes
from keel.storage.sqlite_file import connect_wal

log = logging.getLogger("keel.jobs")
EXECUTOR_SCAN_S = 5.0  # how often the leader looks for executors that died

FALLBACK_RECHECK_S = 3600.0


def system_database_url(settings: Settings) -> str:
    url = settings.approvals.system_database_url
    if url:
        return url
    return f"sqlite:///{settings.data_dir / 'dbos.sqlite'}"


def _batched_listener(self: Any) -> None:
    """Replacement for SQLiteSystemDatabase._notification_listener (see module doc).

    Each tick first reads ``PRAGMA data_version`` on a connection of its own (a few µs,
    no transaction): it changes only when another connection committed, so an idle
    process runs no query at all; DBOS's engine takes ``BEGIN IMMEDIATE`` (a write lock)
    for every transaction, which this poll no longer does 20 times a second."""
    query = "SELECT DISTINCT destination_uuid, topic FROM notifications WHERE NOT consumed"
    wake: threading.Event = self._keel_wake
    conn = sqlite3.connect(self.engine.url.database, isolation_level=None,
                           check_same_thread=False)
    last = -1
    try:
        while self._run_background_processes:
            woken = wake.wait(self._notification_listener_polling_interval_sec)
            wake.clear()
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version == last and not woken:
                    continue
                last = version
                rows = conn.execute(query).fetchall()
                if not rows:
                    continue
                ready = {(r[0], r[1]) for r in rows}
                for _payload, (dest, topic, _key), event in self.notifications_map.snapshot():
                    if (dest, topic) in ready:
                        event.set()
            except Exception as exc:  # keep listening; DBOS's fallback re-check still runs
                last = -1
                if self._run_background_processes:
                    log.warning("jobs: notification poll failed: %s", exc)
                    time.sleep(0.5)
    finally:
        conn.close()


def tune_dbos() -> None:
    """Apply the listener and fallback tunings (idempotent, once per process)."""
    from dbos._sys_db import SystemDatabase
    from dbos._sys_db_sqlite import SQLiteSystemDatabase

    from keel.jobs import queue_wake

    if getattr(SQLiteSystemDatabase, "_keel_tuned", False):
        return
    original_init = SQLiteSystemDatabase.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        original_init(self, *a, **kw)
        self._keel_wake = threading.Event()

    SQLiteSystemDatabase.__init__ = init  # type: ignore[method-assign]
    SQLiteSystemDatabase._notification_listener = _batched_listener  # type: ignore[method-assign]
    SystemDatabase._notification_fallback_polling_interval = FALLBACK_RECHECK_S
    SQLiteSystemDatabase._keel_tuned = True  # type: ignore[attr-defined]
    queue_wake.install()


def _sqlite_engine(url: str) -> sa.Engine:
    """DBOS's SQLite engine plus WAL and synchronous=NORMAL (DBOS sets neither)."""
    path = url.removeprefix("sqlite:///")
    connect_wal(path).close()  # created 0600 in a 0700 dir; WAL is persistent in the file
    engine = sa.create_engine(url, pool_size=10, max_overflow=20, pool_timeout=30)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = "IMMEDIATE"
        dbapi_conn.execute("PRAGMA busy_timeout=30000")
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


def dbos_config(settings: Settings, *, executor_id: str | None = None) -> dict[str, Any]:
    s = settings.approvals
    url = system_database_url(settings)
    cfg: dict[str, Any] = {
        "name": "keel",
        "system_database_url": url,
        "application_version": s.application_version,
        "executor_id": executor_id or s.executor_id,
        "notification_listener_polling_interval_sec": s.polling_interval_s,
        "log_level": "WARNING",
        "console_log_level": "WARNING",
    }
    if url.startswith("sqlite:///"):
        cfg["system_database_engine"] = _sqlite_engine(url)
    return cfg


@dataclass(frozen=True)
class QueueSpec:
    name: str
    concurrency: int | None = None  # across every process
    worker_concurrency: int | None = None  # per process
    gateway: bool = True  # served by gateway processes (False: only by `keel worker`s)
    polling_interval_s: float | None = None  # None: [approvals] polling_interval_s


class JobRuntime:
    """Launches DBOS for this process once, with every capability's workflows and queues.

    ``worker=True``: a ``keel worker`` process (an executor id of its own that the gateway
    recovers when it dies) serving ``queues`` (all declared ones when ``None``).
    ``executor_id``: a fixed id (one-shot CLI runs), no lease.
    """

    def __init__(self, settings: Settings, *, executor_id: str | None = None,
                 worker: bool = False, queues: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.executor_id = executor_id
        self.worker = worker
        self.serve_queues = None if queues is None else tuple(queues)
        self.launched = False
        self._registrations: list[Callable[[], None]] = []
        self._after_launch: list[Callable[[], Awaitable[object]]] = []
        self._queues: dict[str, QueueSpec] = {}
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.wakes = QueueWakes()  # see keel.jobs.queue_wake
        self.batch = BatchEnqueuer(self._system_engine)
        # A gateway (no explicit id) leases its executor id: see keel.jobs.executors;
        # a worker takes an id of its own that the gateway recovers.
        self.lease = None if executor_id is not None else ExecutorLease(
            settings.data_dir / "executors", settings.approvals.executor_id, lead=not worker)

    # -- declared by capabilities while the app is built ----------------------------------

    def on_launch(self, register: Callable[[], None]) -> None:
        """``register()`` runs right before every ``DBOS.launch()``: define the
        ``@DBOS.workflow`` / ``@DBOS.step`` functions there, never at import."""
        self._registrations.append(register)

    def after_launch(self, hook: Callable[[], Awaitable[object]]) -> None:
        """``await hook()`` once DBOS runs (e.g. repair state left by a crash)."""
        self._after_launch.append(hook)

    def queue(self, name: str, *, concurrency: int | None = None,
              worker_concurrency: int | None = None, gateway: bool = True,
              polling_interval_s: float | None = None) -> None:
        """Declare a DBOS queue; registered right after launch. A queue whose local
        enqueues call :meth:`wake_queue` can poll rarely (``polling_interval_s``): its
        thread also looks at once after a local enqueue or a local workflow's end."""
        self._queues[name] = QueueSpec(name, concurrency, worker_concurrency, gateway,
                                       polling_interval_s)

    def queues(self) -> list[QueueSpec]:
        return list(self._queues.values())

    def served(self) -> list[str]:
        """The queues this process dequeues from."""
        if self.serve_queues is not None:
            return [q for q in self.serve_queues if q in self._queues]
        if self.worker:
            return list(self._queues)
        return [q.name for q in self._queues.values() if q.gateway]

    # -- lifecycle ------------------------------------------------------------------------

    def has_state(self) -> bool:
        """Whether a system database exists (so there may be work to resume)."""
        url = system_database_url(self.settings)
        return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).exists()

    async def resume(self) -> None:
        """Launch now when there may be durable work to resume; otherwise on first use."""
        if self.has_state():
            await self.ensure_started()

    async def ensure_started(self) -> None:
        """Launch DBOS now unless it runs already (called before any durable work)."""
        if self.launched:
            return
        async with self._lock:
            if self.launched:
                return
            await asyncio.to_thread(self._launch)
            for hook in self._after_launch:
                await hook()
            if self.lease is not None and self.lease.leader:
                self._watcher = asyncio.create_task(self._watch_executors(),
                                                    name="keel-executors")

    def _launch(self) -> None:
        from dbos import DBOS

        unknown = sorted(set(self.serve_queues or ()) - set(self._queues))
        if unknown:
            raise ConfigError(f"no enabled capability declares the queue {unknown[0]!r} "
                              f"(declared: {', '.join(sorted(self._queues)) or 'none'})")
        tune_dbos()
        DBOS.destroy(destroy_registry=True)  # whatever an earlier app in this process left
        for register in self._registrations:
            register()
        executor = self.lease.acquire() if self.lease is not None else self.executor_id
        inst = DBOS(config=dbos_config(self.settings, executor_id=executor))  # type: ignore[arg-type]
        inst._keel_queue_wakes = self.wakes  # type: ignore[attr-defined]
        inst._active_workflows_set._keel_on_release = self.wakes.released  # type: ignore[attr-defined]
        DBOS.listen_queues(self.served())
        DBOS.launch()
        sys_db = getattr(inst, "_sys_db_field", None)
        if sys_db is not None:  # claims tell the wakes whether work may be left
            sys_db._keel_queue_wakes = self.wakes
        self.launched = True
        poll = self.settings.approvals.polling_interval_s
        for q in self._queues.values():
            DBOS.register_queue(q.name, polling_interval_sec=q.polling_interval_s or poll,
                                concurrency=q.concurrency,
                                worker_concurrency=q.worker_concurrency)
        self.recover_dead()

    def recover_dead(self) -> int:
        """The leader resumes the workflows of executors whose process died (blocking)."""
        from dbos import DBOS

        if self.lease is None or not self.launched:
            return 0
        n = 0
        for executor_id, fh in self.lease.dead():
            handles = DBOS._recover_pending_workflows([executor_id])
            log.info("jobs: recovered %d workflow(s) of dead executor %s",
                     len(handles), executor_id)
            n += len(handles)
            self.lease.forget(executor_id, fh)
        return n

    async def _watch_executors(self) -> None:
        while True:
            await asyncio.sleep(EXECUTOR_SCAN_S)
            try:
                await asyncio.to_thread(self.recover_dead)
            except Exception as exc:  # keep watching; the next scan retries
                log.warning("jobs: recovering a dead executor failed: %s", exc)

    def wake(self) -> None:
        """Make the SQLite listener look for new messages now (after a local send)."""
        from dbos._dbos import _dbos_global_instance

        inst = _dbos_global_instance
        sys_db = getattr(inst, "_sys_db_field", None) if inst is not None else None
        ev = getattr(sys_db, "_keel_wake", None)
        if ev is not None:
            ev.set()

    def wake_queue(self, name: str) -> None:
        """Make this process's thread for queue ``name`` claim now (after an enqueue)."""
        self.wakes.wake(name)

    async def enqueue_many(self, queue: str, workflow: str,
                           items: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Enqueue the workflow named ``workflow`` once per ``(workflow_id, args)`` in one
        transaction (ids that exist already are left alone), then wake ``queue`` here."""
        await self.ensure_started()
        await asyncio.to_thread(self.batch.enqueue, queue, workflow, items)
        self.wake_queue(queue)

    def _system_engine(self) -> sa.Engine:
        url = system_database_url(self.settings)
        if url.startswith("sqlite:///"):
            return _sqlite_engine(url)
        from keel.storage.sql import engine_url

        return sa.create_engine(engine_url(url), pool_size=2, max_overflow=2,
                                pool_pre_ping=True)

    async def stop(self) -> None:
        """Destroy DBOS (and its registry) and give the loop back a default executor: DBOS
        made its own executor the loop's default, and destroying DBOS shuts that down."""
        from concurrent.futures import ThreadPoolExecutor

        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if not self.launched:
            return
        self.launched = False
        self.wakes.wake_all()  # sleeping queue threads see the stop at once
        await asyncio.to_thread(self.batch.close)
        loop = asyncio.get_running_loop()
        # a fresh default executor first: writes that run while DBOS shuts its own down
        # (a request-log flush) must not fail with "cannot schedule new futures"
        fresh = ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(fresh)
        done = loop.create_future()

        def shutdown() -> None:
            try:
                from dbos import DBOS

                DBOS.destroy(destroy_registry=True)
                if self.lease is not None:
                    self.lease.release()
                loop.call_soon_threadsafe(done.set_result, None)
            except BaseException as exc:
                loop.call_soon_threadsafe(done.set_exception, exc)

        threading.Thread(target=shutdown, name="keel-dbos-shutdown", daemon=True).start()
        await done
        # an async DBOS call still running (a workflow step) may have put DBOS's executor
        # back as the default meanwhile; it is shut down now, so install ours again
        loop.set_default_executor(fresh)
