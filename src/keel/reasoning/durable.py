"""Runs as DBOS workflows: one workflow per run, one queued workflow per sample.

The run workflow enqueues every sample the budget allows on its reasoner's queue
(``keel.reasoning.<name>``, concurrency = the reasoner's ``max_concurrency`` across every
process serving it, gateways and ``keel worker``s alike) under fixed ids
(``<run>-s<index>``), then follows the samples in the run store. After a crash (kill -9)
DBOS resumes the run workflow; the enqueues replay with the same ids, and a sample whose
result is recorded returns it without calling the model again. Early stop marks the
remaining samples cancelled in the store; queued ones then end without a model call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from keel.reasoning.engine import ReasoningEngine, SampleResult
from keel.reasoning.settings import ReasonerSpec
from keel.reasoning.store import Run

if TYPE_CHECKING:
    from keel.jobs.runtime import JobRuntime

T = TypeVar("T")
RUN_WORKFLOW = "keel.reasoning.run"
SAMPLE_WORKFLOW = "keel.reasoning.sample"
FOLLOW_POLL_S = 0.25
COALESCE_S = 0.005  # samples served by another process: how often the run looks


def queue_name(reasoner: str) -> str:
    return f"keel.reasoning.{reasoner}"


def sample_workflow_id(run_id: str, index: int) -> str:
    return f"{run_id}-s{index}"


class DurableRuns:
    def __init__(self, engine: ReasoningEngine, runtime: JobRuntime,
                 reasoners: Sequence[ReasonerSpec]) -> None:
        self.engine = engine
        self.runtime = runtime
        self._run_wf: Callable[[str], Coroutine[Any, Any, str]] | None = None
        self._sample_wf: Callable[[str, int], Coroutine[Any, Any, bool]] | None = None
        self._changed = asyncio.Event()
        # DBOS runs dequeued and recovered workflows on its own event loop; a run's model
        # calls use the app's HTTP sessions, so workflow bodies run on the app's loop
        # (set by the capability's start()). DBOS operations inside them are idempotent by
        # workflow id, so they need no workflow context.
        self.loop: asyncio.AbstractEventLoop | None = None
        runtime.on_launch(self._register)
        for r in reasoners:
            runtime.queue(queue_name(r.name), concurrency=r.max_concurrency)
        engine.fanout = self.fanout

    def pulse(self) -> None:
        self._changed.set()

    def _register(self) -> None:
        from dbos import DBOS

        engine = self.engine

        @DBOS.workflow(name=RUN_WORKFLOW)
        async def run_workflow(run_id: str) -> str:
            return await self._on_app_loop(run_body(run_id))

        async def run_body(run_id: str) -> str:
            return (await engine.execute(run_id)).status

        @DBOS.workflow(name=SAMPLE_WORKFLOW)
        async def sample_workflow(run_id: str, index: int) -> bool:
            return await self._on_app_loop(sample_body(run_id, index))

        async def sample_body(run_id: str, index: int) -> bool:
            run = await engine.store.get(run_id, with_samples=False)
            if run is None or run.done:
                return False
            stored = await engine.store.sample(run_id, index)
            if stored is None or stored["status"] != "pending":  # done, or cancelled
                return bool(stored and stored["status"] == "ok")
            spec = engine.reasoner(run.reasoner)
            return (await engine.sample(run, spec, index, stored)).ok

        self._run_wf, self._sample_wf = run_workflow, sample_workflow

    async def _on_app_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self.loop
        if loop is None or loop is asyncio.get_running_loop() or loop.is_closed():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def launch(self, run_id: str) -> None:
        from dbos import DBOS, SetWorkflowID

        await self.runtime.ensure_started()
        assert self._run_wf is not None
        with SetWorkflowID(run_id):  # the same id again: DBOS returns the existing one
            await DBOS.start_workflow_async(self._run_wf, run_id)

    async def fanout(self, run: Run, spec: ReasonerSpec, indices: Sequence[int],
                     on_done: Callable[[SampleResult], Awaitable[bool]]) -> None:
        from dbos import DBOS, SetWorkflowID

        assert self._sample_wf is not None
        queue = await DBOS.retrieve_queue_async(queue_name(spec.name))
        if queue is None:
            raise RuntimeError(f"queue {queue_name(spec.name)} is not registered")
        # Every affordable sample, in index order, done ones included: a replay after a
        # crash enqueues the same ids in the same order.
        affordable = [s["index"] for s in run.samples if s["status"] != "skipped"]
        for i in affordable:
            with SetWorkflowID(sample_workflow_id(run.id, i)):
                await queue.enqueue_async(self._sample_wf, run.id, i)
        waiting = set(indices)
        while waiting:
            self._changed.clear()
            for index, status, text in sorted(await self.engine.store.finished(run.id)):
                if index in waiting:
                    waiting.discard(index)
                    if await on_done(SampleResult(index, status == "ok", text)):
                        return
            if waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), FOLLOW_POLL_S)
                await asyncio.sleep(COALESCE_S)  # one look for a burst of finished samples
