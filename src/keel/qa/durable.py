"""Durable swarm runs on keel's job runtime (DBOS): ``keel qa run --durable``.

``keel.qa.run`` (workflow) splits the sampled prompts into batches and enqueues one
``keel.qa.batch`` workflow per batch on the ``keel.qa.swarm`` queue, which every keel
process with the runtime serves (``keel worker`` processes on other machines sharing the
Postgres system database included). A batch is one step: it fires its prompts at the
target, checks and judges them, and stores each result as it lands (one row per run and
prompt) before returning a compact verdict list. The run workflow then decides the gate
and closes the run. A process killed mid-run resumes where it stopped: finished batches
are not re-run, and a batch cut short is retried for its prompts without a stored result
only (a prompt whose result was stored is never sent to the target again; only those in
flight at the kill are).

In a durable run the judge is called over HTTP (``--judge-url``; point it at this keel's
own gateway so metering and budgets apply): a queue worker has no app to call a model
in-process.

The target's and the judge's API keys are never part of a workflow's inputs (DBOS stores
those in its system database): each batch reads them from ``$KEEL_QA_TARGET_KEY`` and
``$KEEL_QA_JUDGE_KEY`` of the process that runs it, so a worker or a restarted keel that
recovers a run needs the same environment variables.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from keel.qa.chat import HttpChat
from keel.qa.checks import CheckConfig
from keel.qa.judge import Judge
from keel.qa.runner import GateConfig, PromptResult, Swarm
from keel.qa.suites import SuitePrompt, parse_line

if TYPE_CHECKING:
    from keel.jobs import JobRuntime
    from keel.storage.sql import Database

SWARM_QUEUE = "keel.qa.swarm"
TARGET_KEY_ENV = "KEEL_QA_TARGET_KEY"
JUDGE_KEY_ENV = "KEEL_QA_JUDGE_KEY"
BATCH = 25


def compact(r: PromptResult) -> dict[str, Any]:
    return {"id": r.prompt.id, "failed": r.failed, "hard": r.hard,
            "judged_fail": bool(r.verdict and r.verdict.verdict == "fail"),
            "flaky": bool(r.verdict and r.verdict.flaky),
            "checks": [f.check for f in r.findings], "latency_ms": r.latency_ms,
            "swarm_usd": r.target_cost_usd, "judge_usd": r.verdict.cost_usd if r.verdict
            else 0.0, "target_error": bool(r.findings and r.findings[0].check
                                           == "target_error")}


def summarize(rows: list[dict[str, Any]], gate: GateConfig, wall_s: float) -> dict[str, Any]:
    """The same gate as an in-process run, from the compact rows."""
    n = len(rows)
    failed = sum(r["failed"] for r in rows)
    hard = sum(r["hard"] for r in rows)
    rate = failed / n if n else 0.0
    if hard > gate.max_hard_failures:
        blocked, reason = True, (f"{hard} hard failure(s) (system prompt leak, broken JSON, "
                                 f"empty reply or target error) > {gate.max_hard_failures} "
                                 "allowed")
    elif rate > gate.max_failure_rate:
        blocked, reason = True, f"failure rate {rate:.1%} > {gate.max_failure_rate:.1%}"
    else:
        blocked, reason = False, (f"failure rate {rate:.1%} <= {gate.max_failure_rate:.1%}, "
                                  "no hard failure")
    counts: dict[str, int] = {"passed": n - failed, "failed": failed, "hard": hard,
                              "judged_fail": sum(r["judged_fail"] for r in rows),
                              "flaky_verdicts": sum(r["flaky"] for r in rows)}
    for r in rows:
        for c in r["checks"]:
            counts["check:" + c] = counts.get("check:" + c, 0) + 1
    return {"counts": counts, "failure_rate": round(rate, 4),
            "gate": "blocked" if blocked else "passed", "reason": reason,
            "wall_s": round(wall_s, 3), "durable": True,
            "all_target_errors": bool(n) and all(r["target_error"] for r in rows),
            "cost": {"swarm_usd": round(sum(r["swarm_usd"] for r in rows), 8),
                     "judge_usd": round(sum(r["judge_usd"] for r in rows), 8)}}


class DurableRuns:
    """Registers the run and batch workflows on the process's job runtime."""

    def __init__(self, db: Database, runtime: JobRuntime, *, worker_concurrency: int = 4
                 ) -> None:
        self.db = db
        self.runtime = runtime
        runtime.on_launch(self._register)
        runtime.queue(SWARM_QUEUE, worker_concurrency=worker_concurrency)
        self.run_workflow: Any = None

    async def evaluate_batch(self, run_id: str, spec: dict[str, Any],
                             batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from keel.qa import runs

        prompts = [parse_line(p, f"{run_id} batch") for p in batch]
        done = await self.db.run(lambda c: runs.outcome_of(c, run_id, prompts, only=True))
        seen = {r.prompt.id for r in done.results}
        todo = [p for p in prompts if p.id not in seen]
        if not todo:  # every result was stored before an interruption
            return [compact(r) for r in done.results]

        async def store(r: PromptResult) -> None:
            await self.db.run(lambda c: runs.upsert_results(c, run_id, [r]))

        # keys come from this process's environment at run time, never from the spec
        target = HttpChat(spec["target"], api_key=os.environ.get(TARGET_KEY_ENV),
                          connections=spec["concurrency"])
        judge_backend = None
        judge = None
        try:
            if spec.get("judge"):
                j = spec["judge"]
                judge_backend = HttpChat(j["url"], api_key=os.environ.get(JUDGE_KEY_ENV))
                judge = Judge(judge_backend, j["model"], j["rubric"])
            swarm = Swarm(target, spec["model"], checks=CheckConfig(**spec["checks"]),
                          judge=judge, concurrency=spec["concurrency"])
            out = await swarm.run(todo, on_result=store)
        finally:
            await target.aclose()
            if judge_backend is not None:
                await judge_backend.aclose()
        order = {p.id: i for i, p in enumerate(prompts)}
        results = sorted(done.results + out.results, key=lambda r: order[r.prompt.id])
        return [compact(r) for r in results]

    def _register(self) -> None:
        from dbos import DBOS, SetWorkflowID

        @DBOS.step(name="keel.qa.evaluate_batch")
        async def evaluate(run_id: str, spec: dict[str, Any],
                           batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return await self.evaluate_batch(run_id, spec, batch)

        @DBOS.workflow(name="keel.qa.batch")
        async def batch_wf(run_id: str, spec: dict[str, Any],
                           batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return await evaluate(run_id, spec, batch)

        @DBOS.step(name="keel.qa.finish")
        async def finish(run_id: str, summary: dict[str, Any]) -> None:
            from keel.qa import runs

            status = "error" if summary["all_target_errors"] else summary["gate"]
            await self.db.run(lambda c: runs.finish_run(c, run_id, status, summary))

        @DBOS.step(name="keel.qa.clock")
        async def clock() -> float:
            return time.time()

        @DBOS.workflow(name="keel.qa.run")
        async def run_wf(run_id: str, spec: dict[str, Any],
                         prompts: list[dict[str, Any]]) -> dict[str, Any]:
            t0 = await clock()
            queue = await DBOS.retrieve_queue_async(SWARM_QUEUE)
            assert queue is not None, "registered at launch"
            handles = []
            for i in range(0, len(prompts), BATCH):
                with SetWorkflowID(f"{run_id}-b{i // BATCH}"):
                    handles.append(await queue.enqueue_async(
                        batch_wf, run_id, spec, prompts[i:i + BATCH]))
            rows: list[dict[str, Any]] = []
            for h in handles:
                rows += await h.get_result()
            gate = GateConfig(spec["gate"]["max_failure_rate"],
                              spec["gate"]["max_hard_failures"])
            summary = summarize(rows, gate, await clock() - t0)
            await finish(run_id, summary)
            return summary

        self.run_workflow = run_wf

    async def start(self, run_id: str, spec: dict[str, Any],
                    prompts: list[SuitePrompt]) -> Any:
        """Start (or, with the same ``run_id``, re-attach to) a durable run."""
        from dbos import DBOS, SetWorkflowID

        await self.runtime.ensure_started()
        with SetWorkflowID(run_id):
            return await DBOS.start_workflow_async(self.run_workflow, run_id, spec,
                                                   [p.as_dict() for p in prompts])
