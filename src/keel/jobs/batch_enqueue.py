"""Enqueue many DBOS workflows in one transaction of the system database.

``Queue.enqueue_async`` writes one transaction per workflow (and, inside a workflow, also
records the child in its parent). A fan-out of many items then spends most of its start
in SQL round trips. DBOS's public client writes the same ENQUEUED rows into a transaction
the caller owns (``DBOSClient.enqueue_in_transaction``), so keel writes all of them at
once. A workflow id that already exists is left as it is (DBOS returns the existing row),
so a replay after a crash enqueues the same ids again without effect.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlalchemy as sa
    from dbos import DBOSClient

APP_NAME = "keel"  # the DBOS application name keel's config uses


class BatchEnqueuer:
    """A DBOS client and an engine on the system database, made on first use."""

    def __init__(self, engine_factory: Callable[[], sa.Engine]) -> None:
        self._engine_factory = engine_factory
        self._lock = threading.Lock()
        self._engine: sa.Engine | None = None
        self._client: DBOSClient | None = None

    def _open(self) -> tuple[sa.Engine, DBOSClient]:
        from dbos import DBOSClient

        with self._lock:
            if self._engine is None or self._client is None:
                self._engine = self._engine_factory()
                self._client = DBOSClient(system_database_engine=self._engine,
                                          application_name=APP_NAME, lazy=True)
            return self._engine, self._client

    def enqueue(self, queue: str, workflow: str,
                items: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Enqueue ``workflow`` on ``queue`` once per ``(workflow_id, args)`` (blocking)."""
        if not items:
            return
        engine, client = self._open()
        with engine.begin() as conn:
            for workflow_id, args in items:
                client.enqueue_in_transaction(conn, {
                    "queue_name": queue, "workflow_name": workflow,
                    "workflow_id": workflow_id, "application_name": APP_NAME}, *args)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.destroy()  # leaves a given engine alone
            if self._engine is not None:
                self._engine.dispose()
            self._engine = self._client = None
