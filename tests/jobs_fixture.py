"""A capability with one durable workflow on a worker-only queue (for the job runtime
tests; imported by the test process and by the ``keel worker`` subprocess it starts)."""

from __future__ import annotations

import os
import sys
from typing import Any

from keel.capability import BuildContext, Capability
from keel.jobs.runtime import JobRuntime

QUEUE = "test.jobs.offline"


class EchoJobs(Capability):
    name = "echo_jobs"

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.runtime = ctx.components.get(JobRuntime)
        self.runtime.on_launch(self._register)
        self.runtime.queue(QUEUE, worker_concurrency=2, gateway=False)
        self.echo: Any = None

    def _register(self) -> None:
        from dbos import DBOS

        @DBOS.workflow(name="test.jobs.echo")
        async def echo(x: int) -> dict[str, int]:
            return {"pid": os.getpid(), "x": x * 2}

        self.echo = echo


def main() -> None:
    """``python jobs_fixture.py DATA_DIR MODELS_DIR``: a worker that exits when idle."""
    import asyncio

    from keel.config import load_settings
    from keel.jobs.worker import serve

    settings = load_settings(None, data_dir=sys.argv[1], models_dir=sys.argv[2])
    report = asyncio.run(serve(settings, queues=[QUEUE], idle_exit_s=1.0, poll_s=0.1,
                               capabilities=[EchoJobs]))
    print(report.exit_reason, flush=True)


if __name__ == "__main__":
    main()
