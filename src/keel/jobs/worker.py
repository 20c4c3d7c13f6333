"""A ``keel worker`` process: the app's capabilities and job runtime without HTTP.

It builds the same services as the gateway (so every capability declares its workflows
and queues), launches DBOS as a worker (an executor id of its own, which the gateway's
leader recovers if this process dies) and dequeues from the chosen queues until stopped,
or until ``idle_exit_s`` passes with nothing queued or running on them: scale to zero.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keel.config import Settings
from keel.jobs.runtime import JobRuntime

if TYPE_CHECKING:
    from keel.capability import Capability
    from keel.ports.provider import ChatProvider

ACTIVE = ["ENQUEUED", "PENDING"]
log = logging.getLogger("keel.jobs")


def process_age_s() -> float | None:
    """Seconds since this process was spawned (Linux; ``None`` elsewhere): how long the
    interpreter and imports took before :func:`serve` ran."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


@dataclass
class WorkerReport:
    executor_id: str
    queues: list[str]
    ran_s: float
    exit_reason: str


async def pending_on(queues: Sequence[str]) -> int:
    """Workflows queued or running on ``queues`` (any process)."""
    from dbos import DBOS

    if not queues:
        return 0
    rows = await DBOS.list_queued_workflows_async(queue_name=list(queues), status=ACTIVE,
                                                  load_input=False, load_output=False,
                                                  limit=1)
    return len(rows)


async def serve(settings: Settings, *, queues: Sequence[str] | None = None,
                idle_exit_s: float | None = None, poll_s: float = 0.5,
                stop: asyncio.Event | None = None,
                on_ready: Callable[[list[str], str], None] | None = None,
                capabilities: Iterable[type[Capability]] = ()) -> WorkerReport:
    """Serve ``queues`` (every declared one when ``None``) until ``stop`` is set or the
    queues stay empty for ``idle_exit_s``."""
    from keel import capabilities as capabilities_mod
    from keel.app import build_services, running

    extra = tuple(capabilities)
    available = capabilities_mod.available(extra)
    only = None
    if queues is not None:  # build what these queues' jobs need, not every capability
        picked = capabilities_mod.for_queues(available, settings, queues)
        only = {c.name for c in picked}
    else:
        picked = [c for c in available if c.enabled(settings)]
    age = process_age_s()
    runtime = JobRuntime(settings, worker=True, queues=queues)
    t0 = time.monotonic()
    reason = "stopped"
    wanted = list(queues) if queues is not None else [
        q for c in picked for q in c.job_queues(settings)]
    providers: dict[str, ChatProvider] = {}
    for cap in picked:  # e.g. a model load the first jobs need, started before the build
        providers.update(await cap.prepare_worker(settings, wanted))
    svc = build_services(settings, jobs=runtime, capabilities=extra, only=only,
                         providers=providers or None)
    built = time.monotonic()
    async with running(svc):
        await runtime.ensure_started()
        log.info("worker ready: %s after spawn (start-up and imports %s, build %.2f s: "
                 "%s; start and job runtime %.2f s)",
                 "?" if age is None else f"{age + time.monotonic() - t0:.2f} s",
                 "?" if age is None else f"{age:.2f} s", built - t0,
                 ", ".join(c.name for c in svc.capabilities) or "no capabilities",
                 time.monotonic() - built)
        served = runtime.served()
        lease = runtime.lease
        executor = lease.id if lease else str(runtime.executor_id)
        if on_ready is not None:
            on_ready(served, executor)
        idle_since = time.monotonic()
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=poll_s)
                break
            except TimeoutError:
                pass
            if idle_exit_s is None:
                continue
            if await pending_on(served):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= idle_exit_s:
                reason = f"idle for {idle_exit_s:g} s"
                break
        return WorkerReport(executor, served, time.monotonic() - t0, reason)


def run(settings: Settings, *, queues: Sequence[str] | None, idle_exit_s: float | None,
        db: str | None, say: Callable[[str], None]) -> WorkerReport | None:
    """What ``keel worker`` does (both entry points): timestamped progress on stderr,
    the shared database, serve until stopped; ``None`` on Ctrl-C."""
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("keel").setLevel(logging.INFO)
    if db:
        settings.database_url = db
        settings.approvals.system_database_url = db

    def ready(served: list[str], executor: str) -> None:
        say(f"worker {executor} (pid {os.getpid()}) serving "
            f"{', '.join(served) or 'no queues'} (Ctrl-C stops)")

    try:
        report = asyncio.run(serve(settings, queues=queues, idle_exit_s=idle_exit_s,
                                   on_ready=ready))
    except KeyboardInterrupt:
        return None
    say(f"worker {report.executor_id} exits: {report.exit_reason}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m keel.jobs``: the worker without the CLI around it. The batch scaler
    spawns workers this way: building the whole ``keel`` command tree (every capability's
    commands) cost about 0.5 s of each cold start."""
    import argparse
    import sys

    from keel.config import load_settings
    from keel.errors import KeelError

    ap = argparse.ArgumentParser(prog="python -m keel.jobs",
                                 description="Serve keel's durable job queues (keel worker).")
    ap.add_argument("--queues", "-q", default=None, help="comma-separated queue names")
    ap.add_argument("--idle-exit", type=float, default=None,
                    help="exit after this many seconds with nothing queued or running")
    args = ap.parse_args(argv)
    if args.idle_exit is not None and args.idle_exit < 0:
        ap.error("--idle-exit must be >= 0")
    names = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        settings = load_settings(None, strict_env=False)
        run(settings, queues=names, idle_exit_s=args.idle_exit,
            db=os.environ.get("KEEL_WORKER_DB"), say=say)
    except KeelError as exc:
        say(f"error: {exc.message}")
        return 1
    return 0

