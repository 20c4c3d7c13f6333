"""Starting, resuming and watching runs in this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from keel.gateway.context import Principal
from keel.reasoning.engine import ReasoningEngine
from keel.reasoning.store import Run, RunStore

log = logging.getLogger("keel.reasoning")
JSON = dict[str, Any]
POLL_S = 0.5  # runs served by another process: how often watchers look at the store

# Starts ``engine.execute(run_id)`` somewhere (a task here, or a durable workflow).
Launcher = Callable[[str], Awaitable[None]]


class ReasoningService:
    """What the routes, the chat stage, the CLI and the console use."""

    def __init__(self, engine: ReasoningEngine, store: RunStore) -> None:
        self.engine = engine
        self.store = store
        self.launcher: Launcher = self._launch_task
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: dict[str, set[asyncio.Event]] = {}
        self._ends: dict[str, set[asyncio.Event]] = {}
        self.on_change: list[Callable[[], None]] = []  # e.g. the durable fan-out's wake-up
        store.on_write = self._pulse

    def _pulse(self, run_id: str, ended: bool) -> None:
        for hook in self.on_change:
            hook()
        for ev in self._changed.get(run_id, ()):
            ev.set()
        if ended:
            for ev in self._ends.get(run_id, ()):
                ev.set()

    async def _launch_task(self, run_id: str) -> None:
        task = asyncio.create_task(self.engine.execute(run_id), name=f"reasoning {run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit(self, principal: Principal, reasoner: str, messages: list[JSON],
                     n: int | None = None, budget_usd: float | None = None,
                     end_user: str | None = None) -> Run:
        """Validate (4xx before any model call), record and start a run. The caller has
        already let the firewall judge the question (and refuse banned end users)."""
        run = self.engine.plan(principal, reasoner, messages, n, budget_usd, end_user)
        await self.engine.create(run)
        await self.launcher(run.id)
        fresh = await self.store.get(run.id)
        assert fresh is not None
        return fresh

    async def resume_unfinished(self) -> int:
        ids = await self.store.unfinished()
        for run_id in ids:
            await self.launcher(run_id)
        return len(ids)

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[JSON]:
        """Events of a run as they are written, until it ends."""
        ev = asyncio.Event()
        self._changed.setdefault(run_id, set()).add(ev)
        try:
            while True:
                ev.clear()
                batch = await self.store.events(run_id, after)
                for e in batch:
                    after = e["seq"]
                    yield e
                if any(e["kind"] in ("succeeded", "failed") for e in batch):
                    return
                if not batch:
                    run = await self.store.get(run_id, with_samples=False)
                    if run is None:
                        return
                    if run.done:  # it ended after the query above: send the last events
                        for e in await self.store.events(run_id, after):
                            yield e
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), POLL_S)
        finally:
            watchers = self._changed.get(run_id, set())
            watchers.discard(ev)
            if not watchers:
                self._changed.pop(run_id, None)

    async def wait(self, run_id: str) -> Run:
        """The run once it has ended: woken by its end in this process, and looking every
        ``POLL_S`` for runs that another process serves."""
        ev = asyncio.Event()
        self._ends.setdefault(run_id, set()).add(ev)
        try:
            while True:
                ev.clear()
                run = await self.store.get(run_id, with_samples=False)
                if run is None or run.done:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), POLL_S)
        finally:
            ends = self._ends.get(run_id, set())
            ends.discard(ev)
            if not ends:
                self._ends.pop(run_id, None)
        run = await self.store.get(run_id)
        assert run is not None
        return run

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
