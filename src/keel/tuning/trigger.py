"""When a model's next training round starts: ``min_new_corrections`` new trainable
corrections since its last version, or a schedule (``every_hours``, only when at least one
new correction arrived), per model (``[tuning.triggers."<model>"]``).

A light loop owned by the tuning capability checks the triggers every ``check_every_s``
(one COUNT query per tuned model; DBOS is not launched while nothing is due, so an idle app
pays nothing). A due round starts the durable workflow ``keel.tuning.round`` on the job
runtime under a workflow id derived from the trigger (the model, its last version and the
correction count bucket or the schedule slot): every process that sees the same trigger
asks for the same id and DBOS runs it once, so replicas never train the same round twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keel.tuning.registry import Version
from keel.tuning.settings import TuningSettings

log = logging.getLogger("keel.tuning")


@dataclass(frozen=True)
class Rule:
    min_new_corrections: int
    every_hours: float


@dataclass(frozen=True)
class Due:
    model: str
    reason: str  # corrections | schedule
    workflow_id: str  # the same trigger seen by any process asks for this one id


def rule(settings: TuningSettings, model: str) -> Rule:
    own = settings.triggers.get(model)
    n = own.min_new_corrections if own and own.min_new_corrections else None
    every = own.every_hours if own and own.every_hours is not None else None
    return Rule(n or settings.min_new_corrections,
                settings.every_hours if every is None else every)


def due(model: str, r: Rule, last: Version | None, new_corrections: int,
        now: float) -> Due | None:
    """The round to start now for ``model``, or ``None``."""
    if new_corrections < 1:
        return None
    after = last.id if last else "base"
    prefix = f"keel.tuning.round:{model}:{after}"
    if new_corrections >= r.min_new_corrections:
        bucket = new_corrections // r.min_new_corrections
        return Due(model, "corrections", f"{prefix}:n{bucket}")
    if r.every_hours > 0:
        period = r.every_hours * 3600.0
        since = last.created if last else 0.0
        if now - since >= period:
            return Due(model, "schedule", f"{prefix}:t{int(now // period)}")
    return None


class TriggerLoop:
    """Checks every tuned model's trigger on a timer and starts the rounds that are due.

    ``check(model)`` returns the due round (or ``None``); ``start(due)`` starts it."""

    def __init__(self, models: Callable[[], list[str]],
                 check: Callable[[str], Awaitable[Due | None]],
                 start: Callable[[Due], Awaitable[object]], every_s: float) -> None:
        self.models = models
        self.check = check
        self.start = start
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> list[Due]:
        started = []
        for model in self.models():
            try:
                d = await self.check(model)
                if d is not None:
                    await self.start(d)
                    started.append(d)
            except Exception:  # one model's trigger must not stop the others'
                log.exception("tuning trigger for %s failed", model)
        return started

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.tick()

    def run_in_background(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keel-tuning-trigger")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
