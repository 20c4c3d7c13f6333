"""Merge concurrent small embedding calls into one forward pass.

Under load many requests each want one short text embedded (the cache's question, the
firewall's prompt). Run one by one, each pays a full model call; the worker thread is the
bottleneck (~100 semantic cache hits/s at concurrency 50 on 2 cores). A :class:`Coalescer`
queues the calls that arrive while the worker is busy and runs them together the next time,
up to ``max_batch`` texts, grouped so no text is padded to more than twice its length.
Results go back to each caller's own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]


@dataclass(slots=True)
class _Waiter:
    texts: list[str]
    future: asyncio.Future[Float32Array]
    loop: asyncio.AbstractEventLoop


def _settle(fut: asyncio.Future[Float32Array], value: Float32Array | BaseException) -> None:
    if fut.done():  # the caller went away (cancelled)
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class Coalescer:
    def __init__(self, tokenize: Callable[[list[str]], list[list[int]]],
                 forward: Callable[[list[list[int]]], Float32Array],
                 submit: Callable[[Callable[[], None]], object], max_batch: int) -> None:
        self._tokenize = tokenize
        self._forward = forward
        self._submit = submit
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._draining = False
        self.batches = 0  # forward passes run (for tests and benchmarks)

    async def __call__(self, texts: list[str]) -> Float32Array:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(texts, loop.create_future(), loop)
        with self._lock:
            self._queue.append(waiter)
            start = not self._draining
            self._draining = True
        if start:
            try:
                self._submit(self._drain)
            except BaseException:
                with self._lock:
                    self._draining = False
                raise
        return await waiter.future

    def _take(self) -> list[_Waiter]:
        with self._lock:
            batch: list[_Waiter] = []
            n = 0
            while self._queue and (not batch or n + len(self._queue[0].texts) <= self.max_batch):
                w = self._queue.pop(0)
                batch.append(w)
                n += len(w.texts)
            if not batch:
                self._draining = False
            return batch

    def _drain(self) -> None:
        """Worker thread: run queued calls, batch by batch, until the queue is empty."""
        while batch := self._take():
            try:
                rows = self._tokenize([t for w in batch for t in w.texts])
                out = self._run(rows)
            except BaseException as exc:  # every waiter of this batch gets the error
                for w in batch:
                    self._deliver(w, exc)
                continue
            i = 0
            for w in batch:
                self._deliver(w, out[i:i + len(w.texts)])
                i += len(w.texts)

    def _run(self, rows: list[list[int]]) -> Float32Array:
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = np.empty((len(rows), 0), np.float32)
        start = 0
        while start < len(order):
            end = start + 1
            shortest = max(1, len(rows[order[start]]))
            while end < len(order) and len(rows[order[end]]) <= 2 * shortest:
                end += 1
            part = order[start:end]
            vecs = self._forward([rows[i] for i in part])
            if out.shape[1] == 0:
                out = np.empty((len(rows), vecs.shape[1]), np.float32)
            out[part] = vecs
            self.batches += 1
            start = end
        return out

    @staticmethod
    def _deliver(w: _Waiter, value: Float32Array | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            w.loop.call_soon_threadsafe(_settle, w.future, value)
