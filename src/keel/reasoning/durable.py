"""Runs as DBOS workflows: one workflow per run, a few queued *lane* workflows per run.

A run samples ``width = min(max_concurrency, affordable samples)`` at a time. Its workflow
enqueues ``ceil(width / slots)`` lanes on its reasoner's queue (``keel.reasoning.<name>``)
under fixed ids (``<run>-l<lane>``), then follows the samples in the run store. A lane
has up to ``slots`` slots (see :func:`lane_slots`), each with a number of its own
(``lane * slots + j``); a slot claims the run's next pending sample in the store
(``running`` under the slot's number), asks the model, records the answer, and claims the
next one until none is left. Every sample is still one gateway request, but it costs one
claim and one write instead of a whole DBOS workflow (enqueue, dequeue, start and outcome
rows), a freed slot is used at once instead of at the queue's next poll, and the DBOS
rows of a lane are shared by its slots. The queue's concurrency is ``max_concurrency /
slots`` lanes across every process serving it (gateways and ``keel worker``s alike), and
no lane has more than ``slots`` slots, so at most ``max_concurrency`` samples of a
reasoner run at once, whatever the number of runs.

After a crash (kill -9) DBOS resumes the run workflow and the lanes (the enqueues replay
with the same ids); a resumed lane first re-runs the sample it had claimed (its answer
never arrived), and a sample whose result is recorded is never requested again. Early
stop marks the pending samples cancelled in the store; the lanes then find nothing to
claim and end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from keel.reasoning import prompts
from keel.reasoning.engine import ReasoningEngine, SampleResult
from keel.reasoning.settings import ReasonerSpec
from keel.reasoning.store import Run

if TYPE_CHECKING:
    from keel.jobs.runtime import JobRuntime

T = TypeVar("T")
log = logging.getLogger("keel.reasoning")
RUN_WORKFLOW = "keel.reasoning.run"
LANE_WORKFLOW = "keel.reasoning.lane"
FOLLOW_POLL_S = 0.25  # samples served by another process: how often the run looks
COALESCE_S = 0.005  # one look for a burst of finished samples
# The queue's threads poll this rarely (lanes enqueued by other processes, recovery); this
# process wakes its own thread after enqueueing and when one of its lanes frees a slot.
QUEUE_POLL_S = 1.0
MAX_LANE_SLOTS = 5  # samples one lane runs at once, at most


def lane_slots(max_concurrency: int) -> int:
    """Slots per lane: the largest divisor of ``max_concurrency`` up to MAX_LANE_SLOTS, so
    that the queue's lane limit times the slots is exactly ``max_concurrency``."""
    return max(d for d in range(1, MAX_LANE_SLOTS + 1) if max_concurrency % d == 0)


def queue_name(reasoner: str) -> str:
    return f"keel.reasoning.{reasoner}"


def lane_workflow_id(run_id: str, lane: int) -> str:
    return f"{run_id}-l{lane}"


class DurableRuns:
    def __init__(self, engine: ReasoningEngine, runtime: JobRuntime,
                 reasoners: Sequence[ReasonerSpec]) -> None:
        self.engine = engine
        self.runtime = runtime
        self._run_wf: Callable[[str], Coroutine[Any, Any, str]] | None = None
        self._lane_wf: Callable[..., Coroutine[Any, Any, int]] | None = None
        self._changed = asyncio.Event()
        self._runs: dict[str, Run] = {}  # runs fanning out here, for this process's lanes
        self._local: dict[str, list[SampleResult]] = {}  # their lanes' results, in order
        # DBOS runs dequeued and recovered workflows on its own event loop; a run's model
        # calls use the app's HTTP sessions, so workflow bodies run on the app's loop
        # (set by the capability's start()). DBOS operations inside them are idempotent by
        # workflow id, so they need no workflow context.
        self.loop: asyncio.AbstractEventLoop | None = None
        runtime.on_launch(self._register)
        for r in reasoners:
            runtime.queue(queue_name(r.name),
                          concurrency=r.max_concurrency // lane_slots(r.max_concurrency),
                          polling_interval_s=QUEUE_POLL_S)
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

        @DBOS.workflow(name=LANE_WORKFLOW)
        async def lane_workflow(run_id: str, lane: int, slots: int = 1,
                                first: int | None = None) -> int:
            # slots numbered first .. first + slots - 1 (one slot numbered like the lane:
            # lanes enqueued before lanes had several slots)
            return await self._on_app_loop(lane_body(run_id, lane if first is None else first,
                                                     slots))

        async def lane_body(run_id: str, first: int, slots: int) -> int:
            run = self._runs.get(run_id) or await engine.store.get(run_id, with_samples=False)
            if run is None or run.done:
                return 0
            spec = engine.reasoner(run.reasoner)
            # every slot runs to its end (a failing one must not orphan the others' claims);
            # then the lane fails with the first error, as a one-slot lane would
            outcomes = await asyncio.gather(*(slot_body(run, spec, first + j)
                                              for j in range(slots)), return_exceptions=True)
            for o in outcomes:
                if isinstance(o, BaseException):
                    raise o
            return sum(o for o in outcomes if isinstance(o, int))

        async def slot_body(run: Run, spec: ReasonerSpec, lane: int) -> int:
            """One slot: claim, sample, record, until the run has nothing left (the store
            calls a slot's number its lane)."""
            run_id = run.id
            done = 0
            stored = await engine.store.claim(run_id, lane)
            while stored is not None:
                index = stored["index"]
                try:  # the result is recorded with the claim of the lane's next sample
                    result = await engine.sample(run, spec, index, stored, lane=lane)
                except Exception as exc:  # a bug: the sample fails, the run never hangs
                    log.exception("reasoning run %s: sample %d", run_id, index)
                    result = SampleResult(index, False, claimed=await engine.store.update_sample(
                        run_id, index, None, claim=lane, status="failed",
                        error=f"internal error: {type(exc).__name__}"))
                stored = result.claimed
                local = self._local.get(run_id)
                if local is not None:  # the run follows here: no need to read it back
                    local.append(result)
                    self._changed.set()
                done += 1
            return done

        self._run_wf, self._lane_wf = run_workflow, lane_workflow

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
        # As many lanes as may run at once, from the affordable samples (not the ones
        # left): a replay after a crash enqueues the same ids, which DBOS leaves alone.
        affordable = self.engine.affordable(spec, run.n, run.budget_usd,
                                            prompts.question_text(run.messages))
        self._runs[run.id], self._local[run.id] = run, []
        try:
            await self._fanout(run, spec, indices, on_done, affordable)
        finally:
            self._runs.pop(run.id, None)
            self._local.pop(run.id, None)

    async def _fanout(self, run: Run, spec: ReasonerSpec, indices: Sequence[int],
                      on_done: Callable[[SampleResult], Awaitable[bool]],
                      affordable: int) -> None:
        width, per_lane = min(spec.max_concurrency, affordable), lane_slots(spec.max_concurrency)
        await self.runtime.enqueue_many(queue_name(spec.name), LANE_WORKFLOW, [
            (lane_workflow_id(run.id, lane), (run.id, lane, min(per_lane, width - start), start))
            for lane, start in enumerate(range(0, width, per_lane))])
        waiting = set(indices)
        local = self._local[run.id]
        look_at = 0.0  # when to read the store next (samples served by other processes)
        while waiting:
            self._changed.clear()
            results = [(r.index, r.ok, r.text) for r in local]
            local.clear()
            if time.monotonic() >= look_at:
                look_at = time.monotonic() + FOLLOW_POLL_S
                results += [(i, status == "ok", text) for i, status, text in sorted(
                    await self.engine.store.finished(run.id, waiting))]
            for index, ok, text in results:
                if index in waiting:
                    waiting.discard(index)
                    if await on_done(SampleResult(index, ok, text)):
                        return
            if waiting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), FOLLOW_POLL_S)
                await asyncio.sleep(COALESCE_S)  # one look for a burst of finished samples
