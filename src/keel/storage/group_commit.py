"""Group commit: writes that arrive together share one transaction.

Each :meth:`Database.run` is a hop to a worker thread plus a transaction; when many
coroutines write at about the same time (the lanes of a reasoning run finishing a wave
of samples), most of their CPU goes to those hops and commits, not to the statements.
:class:`GroupCommit` queues the functions and runs everything queued so far in one
transaction, in one hop; whatever arrives meanwhile forms the next group. Every caller
still returns only after its own write is committed, so nothing is acknowledged before
it is durable. When a group fails, its functions are retried one transaction each, so
only the failing one raises.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection

from keel.storage.sql import Database

T = TypeVar("T")
Pending = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]


class GroupCommit:
    def __init__(self, db: Database, *, max_group: int = 64) -> None:
        self.db = db
        self.max_group = max_group
        self._queue: list[Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._flusher is not None and not self._flusher.done():
                return await self.db.run(fn)  # another loop's group is in flight
            self._loop, self._queue = loop, []
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((fn, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="keel-group-commit")
        return await asyncio.shield(fut)  # a cancelled caller's write still lands

    async def _flush(self) -> None:
        group: list[Pending] = []
        try:
            while self._queue:
                group, self._queue = (self._queue[:self.max_group],
                                      self._queue[self.max_group:])
                await self._commit(group)
        except BaseException as exc:  # cancelled (shutdown): nobody may wait forever
            for _, fut in [*group, *self._queue]:
                if not fut.done():
                    fut.set_exception(exc)
            self._queue = []
            raise

    async def _commit(self, group: list[Pending]) -> None:
        try:
            results = await self.db.run(lambda c: [fn(c) for fn, _ in group])
        except Exception:
            for fn, fut in group:  # one at a time: only the failing write raises
                try:
                    result = await self.db.run(fn)
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(result)
            return
        for (_, fut), result in zip(group, results, strict=True):
            if not fut.done():
                fut.set_result(result)
