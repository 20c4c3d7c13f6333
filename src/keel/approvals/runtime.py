"""The process's DBOS instance for one app lifetime: configure, register, launch, destroy.

DBOS is a per-process singleton with decorator registration. keel registers its workflows
(closures over the app's engine) right before ``DBOS.launch()`` in the app lifespan and
destroys instance *and* registry on shutdown, so a test can build a fresh app afterwards.

Two tunings, applied once per process (:func:`tune_dbos`):

* DBOS's SQLite notification listener issues one query per waiting workflow every poll
  (10,000 pending approvals = 10,000 queries per tick). keel replaces it with one query for
  all unconsumed messages per tick, and lets the engine wake it at once after a local send.
* The per-waiter fallback re-check (every 60 s, i.e. 166 queries/s with 10,000 waiters)
  runs every ``FALLBACK_RECHECK_S`` instead: messages are found by the listener anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from keel.approvals.executors import ExecutorLease
from keel.config import Settings
from keel.storage.sqlite_file import connect_wal

log = logging.getLogger("keel.approvals")

FALLBACK_RECHECK_S = 3600.0


def system_database_url(settings: Settings) -> str:
    url = settings.approvals.system_database_url
    if url:
        return url
    return f"sqlite:///{settings.data_dir / 'dbos.sqlite'}"


def _batched_listener(self: Any) -> None:
    """Replacement for SQLiteSystemDatabase._notification_listener (see module doc)."""
    from dbos._schemas.system_database import SystemSchema

    n = SystemSchema.notifications
    wake: threading.Event = self._keel_wake
    while self._run_background_processes:
        wake.wait(self._notification_listener_polling_interval_sec)
        wake.clear()
        try:
            with self.engine.begin() as conn:  # one indexed-size query, however many wait
                rows = conn.execute(sa.select(n.c.destination_uuid, n.c.topic)
                                    .where(n.c.consumed == sa.false()).distinct()).fetchall()
            if not rows:
                continue
            ready = {(r[0], r[1]) for r in rows}
            for _payload, (dest, topic, _key), event in self.notifications_map.snapshot():
                if (dest, topic) in ready:
                    event.set()
        except Exception as exc:  # keep listening; DBOS's fallback re-check still runs
            if self._run_background_processes:
                log.warning("approvals: notification poll failed: %s", exc)
                time.sleep(0.5)


def tune_dbos() -> None:
    """Apply the listener and fallback tunings (idempotent, once per process)."""
    from dbos._sys_db import SystemDatabase
    from dbos._sys_db_sqlite import SQLiteSystemDatabase

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


class DbosRuntime:
    """Launches DBOS for this process; one at a time (DBOS is a singleton)."""

    def __init__(self, settings: Settings, *, executor_id: str | None = None,
                 worker: bool = False) -> None:
        self.settings = settings
        self.executor_id = executor_id
        self.launched = False
        # The gateway (no explicit id) leases its executor id: see keel.approvals.executors;
        # a `keel workflows worker` takes an id of its own that the gateway recovers.
        self.lease = None if executor_id is not None else ExecutorLease(
            settings.data_dir / "executors", settings.approvals.executor_id, lead=not worker)

    def launch(self, register: Callable[[], None]) -> None:
        from dbos import DBOS

        tune_dbos()
        DBOS.destroy(destroy_registry=True)  # whatever an earlier app in this process left
        register()
        executor = self.lease.acquire() if self.lease is not None else self.executor_id
        DBOS(config=dbos_config(self.settings, executor_id=executor))  # type: ignore[arg-type]
        DBOS.launch()
        self.launched = True
        from keel.workflows.interpreter import MAP_QUEUE

        DBOS.register_queue(  # distributed Map items: every keel process serves it
            MAP_QUEUE, polling_interval_sec=self.settings.approvals.polling_interval_s,
            worker_concurrency=self.settings.workflows.map_worker_concurrency)
        self.recover_dead()

    def recover_dead(self) -> int:
        """The leader resumes the workflows of executors whose process died (blocking)."""
        from dbos import DBOS

        if self.lease is None or not self.launched:
            return 0
        n = 0
        for executor_id, fh in self.lease.dead():
            handles = DBOS._recover_pending_workflows([executor_id])
            log.info("approvals: recovered %d workflow(s) of dead executor %s",
                     len(handles), executor_id)
            n += len(handles)
            self.lease.forget(executor_id, fh)
        return n

    def wake(self) -> None:
        """Make the SQLite listener look for new messages now (after a local send)."""
        from dbos._dbos import _dbos_global_instance

        inst = _dbos_global_instance
        sys_db = getattr(inst, "_sys_db_field", None) if inst is not None else None
        ev = getattr(sys_db, "_keel_wake", None)
        if ev is not None:
            ev.set()

    def shutdown(self) -> None:
        if not self.launched:
            return
        from dbos import DBOS

        self.launched = False
        DBOS.destroy(destroy_registry=True)
        if self.lease is not None:
            self.lease.release()
