"""Periodic background work that always stops.

Several capabilities refresh or flush something every few seconds (mode flags, bans, cache
stats, policy versions, payment holds). Stopping such a loop by cancelling its task alone is
not enough: a driver can swallow the cancellation (Python 3.11's ``asyncio.Condition.wait``,
used by redis-py's blocking pool, may do so when a notify races the cancel), and a loop that
catches ``Exception`` then goes on forever while shutdown awaits it. :class:`Periodic` also
sets a flag the loop checks every round, and waits a bounded time for the task to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("keel.background")


class Periodic:
    """Run ``step`` every ``interval_s`` seconds in a task until :meth:`stop`.

    An exception from ``step`` is logged with ``error`` and the next round retries; with
    ``at_once`` the first round runs right away instead of after one interval."""

    def __init__(self, name: str, interval_s: float, step: Callable[[], Awaitable[None]], *,
                 error: str, logger: logging.Logger | None = None, at_once: bool = False
                 ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.step = step
        self.error = error
        self.log = logger or log
        self.at_once = at_once
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self._task is None:
            self._stop = asyncio.Event()  # one per run: a straggler never sees a new run's
            self._task = asyncio.get_running_loop().create_task(self._run(self._stop),
                                                                 name=self.name)

    async def _run(self, stop: asyncio.Event) -> None:
        first = True
        while not stop.is_set():
            if not (first and self.at_once):
                try:  # sleep, but wake at once when stopped
                    await asyncio.wait_for(stop.wait(), self.interval_s)
                    return
                except TimeoutError:
                    pass
            first = False
            try:
                await self.step()
            except Exception:  # the next round retries; background work never stops serving
                self.log.exception(self.error)

    async def stop(self, timeout_s: float = 5.0) -> None:
        task, self._task = self._task, None
        if self._stop is not None:
            self._stop.set()
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            self.log.warning("%s did not stop within %.0f s; leaving it behind", self.name,
                             timeout_s)
