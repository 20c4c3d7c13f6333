"""Wake a DBOS queue's worker thread at once instead of at its next poll.

DBOS dequeues by polling: each queue's thread sleeps ``polling_interval_sec`` between
claims, and one claim costs several SQL statements (queue row, application version,
pending count, the claim itself). A short interval makes work start soon but burns CPU
all the time, busy or idle (about 17% of a core for three queues at 50 ms); a long one
makes every wave of a fan-out wait for the next tick.

keel gives each queue thread a wake event. The thread still polls at the queue's
interval (for work enqueued by other processes, and after a crash), but it also polls as
soon as

* this process enqueued work on the queue (:meth:`QueueWakes.wake` after the enqueue),
* a workflow of the queue finished in this process (a concurrency slot is free) while
  the queue's last claim here may have left work behind (it claimed something, or a
  concurrency limit stopped it): DBOS releases the workflow's active entry after its
  outcome is recorded, so the claim that follows sees the slot. A claim that found
  nothing to take means the queue was empty then; until something is enqueued here (a
  wake) or the next poll, freed slots wake nobody (a burst of 25 endings costs one claim,
  not 25).

Claims stay DBOS's own transactional claims, so concurrency limits across processes and
exactly-once dequeueing are unchanged; only *when* a thread looks changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

STOP_CHECK_S = 0.1  # how often a sleeping queue thread looks at DBOS's stop event


class QueueWakes:
    """One wake event per queue name (created on first use, thread-safe), and whether the
    queue's last claim in this process may have left work behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._maybe_more: dict[str, bool] = {}

    def claimed(self, queue: str, took: int, stopped_by_limit: bool) -> None:
        with self._lock:
            self._maybe_more[queue] = took > 0 or stopped_by_limit

    def released(self, queue: str) -> None:
        """A workflow of ``queue`` ended here: claim again if work may be waiting."""
        with self._lock:
            more = self._maybe_more.get(queue, True)
        if more:
            self.wake(queue)

    def event(self, queue: str) -> threading.Event:
        with self._lock:
            ev = self._events.get(queue)
            if ev is None:
                ev = self._events[queue] = threading.Event()
            return ev

    def wake(self, queue: str) -> None:
        with self._lock:
            self._maybe_more[queue] = True  # something new may be there
        self.event(queue).set()

    def wake_all(self) -> None:
        with self._lock:
            for ev in self._events.values():
                ev.set()


class WakeableStop:
    """Stands in for DBOS's stop event inside one queue thread: ``is_set`` is DBOS's, and
    ``wait(timeout)`` also returns (False: not stopping) when the queue is woken."""

    def __init__(self, stop: threading.Event, wake: threading.Event) -> None:
        self._stop = stop
        self._wake = wake

    def is_set(self) -> bool:
        return self._stop.is_set()

    def set(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            left = STOP_CHECK_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(left, STOP_CHECK_S)):
                self._wake.clear()
                return self._stop.is_set()
        return True


def install() -> None:
    """Patch DBOS (idempotent): queue threads wait on a :class:`WakeableStop` when their
    DBOS instance carries ``_keel_queue_wakes`` (a :class:`QueueWakes`), which also hears
    of every claim of that instance's system database, and releasing a queued workflow's
    active entry calls the set's ``_keel_on_release(queue)``."""
    from dbos import _core, _queue
    from dbos._sys_db import SystemDatabase

    if getattr(_queue, "_keel_wakeable", False):
        return
    original_worker: Callable[..., None] = _queue.queue_worker_thread

    def queue_worker_thread(stop_event: threading.Event, dbos: Any, queue: Any) -> None:
        wakes = getattr(dbos, "_keel_queue_wakes", None)
        if isinstance(wakes, QueueWakes):
            stop_event = WakeableStop(stop_event, wakes.event(queue.name))  # type: ignore[assignment]
        original_worker(stop_event, dbos, queue)

    original_remove = _core.ActiveWorkflowById._remove

    def _remove(self: Any, key: str, bucket: Any) -> None:
        original_remove(self, key, bucket)
        hook = getattr(self, "_keel_on_release", None)
        if hook is not None and bucket is not None:
            hook(bucket[0])

    original_claim = SystemDatabase.start_queued_workflows

    def start_queued_workflows(self: Any, queue: Any, *a: Any, **kw: Any) -> Any:
        ids, stop_reason = original_claim(self, queue, *a, **kw)
        wakes = getattr(self, "_keel_queue_wakes", None)
        if isinstance(wakes, QueueWakes):
            wakes.claimed(queue.name, len(ids), stop_reason is not None)
        return ids, stop_reason

    SystemDatabase.start_queued_workflows = start_queued_workflows  # type: ignore[method-assign]
    _queue.queue_worker_thread = queue_worker_thread
    _core.ActiveWorkflowById._remove = _remove  # type: ignore[method-assign]
    _queue._keel_wakeable = True  # type: ignore[attr-defined]
