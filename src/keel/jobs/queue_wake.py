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
* a workflow of the queue finished in this process (a concurrency slot is free): DBOS
  releases the workflow's active entry after its outcome is recorded, so the claim that
  follows sees the slot.

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
    """One wake event per queue name (created on first use, thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def event(self, queue: str) -> threading.Event:
        with self._lock:
            ev = self._events.get(queue)
            if ev is None:
                ev = self._events[queue] = threading.Event()
            return ev

    def wake(self, queue: str) -> None:
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
    DBOS instance carries ``_keel_queue_wakes``, and releasing a queued workflow's active
    entry calls the set's ``_keel_on_release(queue)``."""
    from dbos import _core, _queue

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

    _queue.queue_worker_thread = queue_worker_thread
    _core.ActiveWorkflowById._remove = _remove  # type: ignore[method-assign]
    _queue._keel_wakeable = True  # type: ignore[attr-defined]
