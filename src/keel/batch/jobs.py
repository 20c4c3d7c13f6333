"""Batch lines on keel's DBOS runtime: one durable job per line on the ``keel.batch`` queue.

The queue is declared ``gateway=False``: gateway processes enqueue but never dequeue, so
batch lines run only in ``keel worker --queues keel.batch`` processes (interactive chat
keeps the gateway's CPU, and an idle gateway has no model loaded for batches). Each worker
runs up to ``batch.worker_slots`` lines at once, the llama.cpp slots it decodes together.

A line's job id is ``<batch id>.<line number>``: enqueueing it again (``resume`` after a
crash) is a no-op. A worker killed mid-line leaves its jobs PENDING; the runtime's leader
re-enqueues them on the same queue, and the line's attempt counter (``keel.batch.runner``)
stops a line that keeps killing workers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keel.batch.runner import LineRunner
from keel.batch.settings import BatchSettings
from keel.jobs.runtime import JobRuntime

QUEUE = "keel.batch"
CANCEL_CHUNK = 500


class BatchJobs:
    def __init__(self, runtime: JobRuntime, settings: BatchSettings,
                 runner: Callable[[], LineRunner]) -> None:
        self.runtime = runtime
        self._runner = runner
        self._line: Any = None
        runtime.on_launch(self._register)
        runtime.queue(QUEUE, worker_concurrency=settings.worker_slots, gateway=False)

    def _register(self) -> None:
        from dbos import DBOS

        runner = self._runner

        @DBOS.step(name="keel.batch.run_line")
        async def run_line(batch_id: str, line_no: int) -> str:
            return await runner().run(batch_id, line_no)

        @DBOS.workflow(name="keel.batch.line")
        async def line(batch_id: str, line_no: int) -> str:
            return await run_line(batch_id, line_no)

        self._line = line

    async def enqueue(self, batch_id: str, line_nos: list[int]) -> None:
        from dbos import DBOS, SetWorkflowID

        await self.runtime.ensure_started()
        for n in line_nos:
            with SetWorkflowID(f"{batch_id}.{n}"):
                await DBOS.enqueue_workflow_async(QUEUE, self._line, batch_id, n)

    async def cancel(self, batch_id: str, line_nos: list[int]) -> None:
        """Drop the queued jobs of cancelled lines (a job dequeued anyway finds its line
        cancelled and returns at once)."""
        from dbos import DBOS

        await self.runtime.ensure_started()
        ids = [f"{batch_id}.{n}" for n in line_nos]
        for i in range(0, len(ids), CANCEL_CHUNK):
            await DBOS.cancel_workflows_async(ids[i:i + CANCEL_CHUNK])
