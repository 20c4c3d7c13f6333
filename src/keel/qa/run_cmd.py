"""``keel qa run``: the swarm against a target, the gate, reports. Exit 0 pass, 1 blocked,
2 bad input (a malformed suite, a target that is down, a missing judge, a bad sample)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keel.cli.common import console, settings_from, styled
from keel.config import Settings
from keel.errors import InvalidRequest, KeelError
from keel.qa.chat import ChatBackend, HttpChat, KeelChat, TargetUnusable, check_url
from keel.qa.checks import CheckConfig
from keel.qa.judge import DEFAULT_RUBRIC, Judge
from keel.qa.runner import GateConfig, PromptResult, RunOutcome, Swarm, sample
from keel.qa.settings import QaProfile
from keel.qa.suites import SuitePrompt

BAD_INPUT = 2
BLOCKED = 1


def parse_sample(value: str | None) -> int | str | None:
    """``all`` -> None, a number -> int, nothing -> "profile" (use the profile's)."""
    if value is None:
        return "profile"
    if value.strip().lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError:
        raise InvalidRequest(f"--sample {value!r}: a number of prompts or 'all'") from None
    if n < 1:
        raise InvalidRequest("--sample must be at least 1 (or 'all')")
    return n


@dataclass
class RunRequest:
    suite: str
    target: str
    model: str
    profile: str
    sample: int | str | None
    concurrency: int | None
    judge: str | None
    judge_url: str | None
    rubric: Path | None
    max_failure_rate: float | None
    canary: str | None
    seed: int | None
    junit: Path | None
    report: Path | None
    quiet: bool = False
    durable: bool = False


def _profile(settings: Settings, name: str) -> QaProfile:
    prof = settings.qa.profiles.get(name)
    if prof is None:
        raise InvalidRequest(f"no QA profile {name!r} in [qa.profiles] (have: "
                        f"{', '.join(sorted(settings.qa.profiles)) or 'none'})")
    return prof


@contextlib.asynccontextmanager
async def judge_backend(settings: Settings, model: str,
                        url: str | None) -> AsyncIterator[ChatBackend]:
    """The judge: a model at ``url`` (OpenAI-compatible), else one of this keel's models
    through the pipeline (metered on the ``[qa] tenant``)."""
    if url:
        backend = HttpChat(url, api_key=os.environ.get("KEEL_QA_JUDGE_KEY"))
        try:
            yield backend
        finally:
            await backend.aclose()
        return
    from keel.app import build_services, running
    from keel.gateway.context import Principal
    from keel.gateway.internal import InternalClient

    svc = build_services(settings)
    svc.models.get(model)  # an unknown model is an error now, not 50 failed verdicts
    async with running(svc):
        yield KeelChat(InternalClient(svc),
                       Principal(key_id="qa-judge", tenant=settings.qa.tenant, agent="keel-qa"))


async def preflight_judge(judge: Judge) -> None:
    p = SuitePrompt(id="preflight", prompt="Say hello.")
    v = await judge.judge(p, "Hello!")
    if all(x.verdict == "error" for x in v.votes):
        raise TargetUnusable(f"the judge model {judge.model!r} is unusable: {v.reasons}")


def check_writable(path: Path, what: str) -> None:
    """Fail before the swarm, not after it: a report that cannot be written would turn a
    finished gate into a crash."""
    if path.is_dir():
        raise InvalidRequest(f"{what} {path} is a directory: give a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise InvalidRequest(f"{what} {path} is not writable")
        return
    parent = path.parent.resolve()
    while not parent.exists():  # missing folders are created when the report is written
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidRequest(f"{what} {path}: cannot create it ({parent} is not a "
                             "writable folder)")


def check_request(req: RunRequest, judge_url: str | None) -> None:
    """Everything about the command line that can be refused before a run exists."""
    check_url(req.target, "--target", "KEEL_QA_TARGET_KEY")
    if judge_url:
        check_url(judge_url, "--judge-url", "KEEL_QA_JUDGE_KEY")
    if req.junit is not None:
        check_writable(req.junit, "--junit")
    if req.report is not None:
        check_writable(req.report, "--report")


async def execute(settings: Settings, req: RunRequest) -> int:
    from keel.app import open_database
    from keel.qa import runs, suites

    prof = _profile(settings, req.profile)
    check_request(req, req.judge_url or prof.judge_url)
    size = prof.sample if req.sample == "profile" else req.sample
    assert not isinstance(size, str)
    db = open_database(settings)
    try:
        name, version, prompts = db.transaction(lambda c: suites.resolve(c, req.suite))
        if req.sample == "profile" and size is not None:
            size = min(size, len(prompts)) or None  # a tier's default never over-asks
        chosen = sample(prompts, size, req.seed)
        checks = CheckConfig(canary=req.canary if req.canary is not None else prof.canary,
                             latency_budget_ms=prof.latency_budget_ms)
        gate = GateConfig(req.max_failure_rate if req.max_failure_rate is not None
                          else prof.max_failure_rate, prof.max_hard_failures)
        target = HttpChat(req.target, api_key=os.environ.get("KEEL_QA_TARGET_KEY"),
                          connections=max(req.concurrency or prof.concurrency, 1))
        judge_model = req.judge or prof.judge
        rubric = req.rubric.read_text(encoding="utf-8") if req.rubric else DEFAULT_RUBRIC
        run_id = "qa_" + secrets.token_hex(6)
        if req.durable:
            await target.aclose()
            d_outcome, d_summary, d_view = await _durable(
                settings, req, run_id, name, version, chosen, checks, gate,
                judge_model, rubric, req.judge_url or prof.judge_url,
                req.concurrency or prof.concurrency)
            return _finish_reports(req, run_id, name, version, d_outcome,
                                   d_summary["gate"] == "blocked", d_summary["reason"],
                                   {"run": run_id, **d_view, **d_summary})
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(target.aclose)
            judge = None
            if judge_model:
                backend = await stack.enter_async_context(
                    judge_backend(settings, judge_model, req.judge_url or prof.judge_url))
                judge = Judge(backend, judge_model, rubric)
                await preflight_judge(judge)
            swarm = Swarm(target, req.model, checks=checks, judge=judge,
                          concurrency=req.concurrency or prof.concurrency)
            settings_view = {"sample": len(chosen), "of": len(prompts), "model": req.model,
                             "judge": judge_model, "max_failure_rate": gate.max_failure_rate,
                             "max_hard_failures": gate.max_hard_failures,
                             "concurrency": swarm.concurrency, "seed": req.seed}
            db.transaction(lambda c: runs.start_run(
                c, run_id, suite=name, version=version, target=req.target,
                profile=req.profile, rubric_version=judge.version if judge else None,
                settings=settings_view))
            try:
                if judge:
                    db.transaction(lambda c: runs.save_rubric(c, judge.version, rubric))
                outcome = await _run_with_progress(swarm, chosen, req.quiet)
            except BaseException as exc:  # never leave a run at "running" forever
                error = {"error": f"the run did not finish: {type(exc).__name__}"}
                db.transaction(lambda c: runs.finish_run(c, run_id, "error", error))
                raise
        if outcome.n and all(r.findings and r.findings[0].check == "target_error"
                             for r in outcome.results):
            detail = outcome.results[0].findings[0].detail
            db.transaction(lambda c: runs.finish_run(c, run_id, "error", {"error": detail}))
            raise TargetUnusable(f"the target is down or not OpenAI-compatible: {detail}")
        blocked, reason = outcome.blocked(gate)
        summary: dict[str, Any] = {
            "counts": outcome.counts(), "failure_rate": round(outcome.failure_rate(), 4),
            "gate": "blocked" if blocked else "passed", "reason": reason,
            "wall_s": round(outcome.wall_s, 3), "cost": outcome.costs()}
        db.transaction(lambda c: runs.add_results(c, run_id, outcome.results))
        db.transaction(lambda c: runs.finish_run(
            c, run_id, "blocked" if blocked else "passed", summary))
    finally:
        db.dispose()
    return _finish_reports(req, run_id, name, version, outcome, blocked, reason,
                           {"run": run_id, **settings_view, **summary})


def _finish_reports(req: RunRequest, run_id: str, name: str, version: str,
                    outcome: RunOutcome, blocked: bool, reason: str,
                    summary: dict[str, Any]) -> int:
    from keel.qa.report import html_report, junit, write

    if req.junit:
        write(req.junit, junit(outcome, suite=f"{name}@{version}", run_id=run_id,
                               blocked=blocked, reason=reason))
    if req.report:
        write(req.report, html_report(outcome, suite=f"{name}@{version}", run_id=run_id,
                                      blocked=blocked, reason=reason, summary=summary))
    _print_summary(run_id, name, version, outcome, blocked, reason)
    return BLOCKED if blocked else 0


async def _durable(settings: Settings, req: RunRequest, run_id: str, name: str,
                   version: str, chosen: list[SuitePrompt], checks: CheckConfig,
                   gate: GateConfig, judge_model: str | None, rubric: str,
                   judge_url: str | None, concurrency: int
                   ) -> tuple[RunOutcome, dict[str, Any], dict[str, Any]]:
    """The run as a DBOS workflow whose batches any keel process may serve."""
    from keel.app import build_services, running
    from keel.jobs import JobRuntime
    from keel.qa import runs
    from keel.qa.durable import DurableRuns
    from keel.qa.judge import rubric_version

    if judge_model and not judge_url:
        raise InvalidRequest("a durable run calls the judge over HTTP: give --judge-url "
                             "(this keel's gateway URL keeps metering and budgets)")
    settings.qa.enabled = True  # this process registers the QA workflows
    judge_spec = None
    if judge_model and judge_url:
        # no keys in the spec: DBOS stores workflow inputs; batches read the env
        judge_spec = {"model": judge_model, "url": judge_url, "rubric": rubric}
        probe = HttpChat(judge_url, api_key=os.environ.get("KEEL_QA_JUDGE_KEY"))
        try:
            await preflight_judge(Judge(probe, judge_model, rubric))
        finally:
            await probe.aclose()
    spec = {"target": req.target, "model": req.model, "concurrency": min(concurrency, 100),
            "checks": {"canary": checks.canary,
                       "latency_budget_ms": checks.latency_budget_ms},
            "judge": judge_spec,
            "gate": {"max_failure_rate": gate.max_failure_rate,
                     "max_hard_failures": gate.max_hard_failures}}
    settings_view = {"sample": len(chosen), "model": req.model, "judge": judge_model,
                     "max_failure_rate": gate.max_failure_rate,
                     "max_hard_failures": gate.max_hard_failures,
                     "concurrency": spec["concurrency"], "seed": req.seed, "durable": True}
    svc = build_services(settings, jobs=JobRuntime(settings, worker=True))
    async with running(svc):
        durable = svc.get(DurableRuns)
        svc.db.transaction(lambda c: runs.start_run(
            c, run_id, suite=name, version=version, target=req.target, profile=req.profile,
            rubric_version=rubric_version(rubric) if judge_model else None,
            settings=settings_view))
        handle = await durable.start(run_id, spec, chosen)
        summary = await _wait(svc, handle, run_id, len(chosen), req.quiet)
        outcome = svc.db.transaction(lambda c: runs.outcome_of(c, run_id, chosen))
    outcome.wall_s = summary["wall_s"]
    if summary["all_target_errors"]:
        detail = next((f.detail for r in outcome.results for f in r.findings), "")
        raise TargetUnusable(f"the target is down or not OpenAI-compatible: {detail}")
    return outcome, summary, settings_view


async def _wait(svc: Any, handle: Any, run_id: str, total: int, quiet: bool
                ) -> dict[str, Any]:
    from keel.qa import runs

    result = asyncio.ensure_future(handle.get_result())
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=quiet) as bar:
        task = bar.add_task("durable swarm", total=total)
        while not result.done():
            await asyncio.wait({result}, timeout=0.5)
            done = await svc.db.run(lambda c: runs.count_results(c, run_id))
            bar.update(task, completed=done)
    summary: dict[str, Any] = result.result()
    return summary


async def _run_with_progress(swarm: Swarm, prompts: list[SuitePrompt],
                             quiet: bool) -> RunOutcome:
    if quiet:
        return await swarm.run(prompts)
    counts = {"pass": 0, "fail": 0}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("swarm", total=len(prompts))

        def tick(r: PromptResult) -> None:
            counts["fail" if r.failed else "pass"] += 1
            bar.update(task, advance=1,
                       description=f"swarm  pass {counts['pass']}  fail {counts['fail']}")

        return await swarm.run(prompts, on_result=tick)


def _print_summary(run_id: str, name: str, version: str, outcome: RunOutcome,
                   blocked: bool, reason: str) -> None:
    c = outcome.counts()
    console.print(styled(("BLOCKED" if blocked else "PASSED", "bold red" if blocked
                          else "bold green"), f"  {reason}"))
    console.print(f"run {run_id}  suite {name}@{version}  prompts {outcome.n}  "
                  f"passed {c.get('passed', 0)}  failed {c.get('failed', 0)}  "
                  f"hard {c.get('hard', 0)}  judged fail {c.get('judged_fail', 0)}  "
                  f"flaky verdicts {c.get('flaky_verdicts', 0)}  "
                  f"{outcome.n / outcome.wall_s if outcome.wall_s else 0:.1f} prompts/s")
    for r in [r for r in outcome.results if r.failed][:10]:
        console.print(f"  {r.prompt.id}: {r.reason}"[:300])


def run_cmd(
    ctx: typer.Context,
    suite: Annotated[str, typer.Option("--suite", help="NAME, NAME@VERSION or a .jsonl file")],
    target: Annotated[str, typer.Option("--target", help="OpenAI-compatible base URL "
                                                         "($KEEL_QA_TARGET_KEY: its key)")],
    model: Annotated[str, typer.Option("--model", help="model name sent to the target")
                     ] = "default",
    profile: Annotated[str, typer.Option("--profile", help="tier in [qa.profiles]")
                       ] = "branch",
    sample_: Annotated[str | None, typer.Option("--sample", help="N prompts or 'all'")
                       ] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", min=1, max=1000)
                           ] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="judge model (keel model, "
                                                              "or at --judge-url)")] = None,
    judge_url: Annotated[str | None, typer.Option("--judge-url")] = None,
    rubric: Annotated[Path | None, typer.Option("--rubric", help="rubric text file")] = None,
    max_failure_rate: Annotated[float | None, typer.Option("--max-failure-rate", min=0.0,
                                                           max=1.0)] = None,
    canary: Annotated[str | None, typer.Option("--canary", help="token planted in the "
                                                                "target's system prompt")
                      ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="sampling seed")] = None,
    junit_file: Annotated[Path | None, typer.Option("--junit")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="HTML report file")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    durable: Annotated[bool, typer.Option("--durable", help="run as a DBOS workflow whose "
                                          "batches `keel worker`s may serve")] = False,
) -> None:
    """Fire a suite at a target; exit 0 when the gate passes, 1 when it blocks, 2 on bad
    input."""
    from keel.qa.cli import bad_input

    settings = settings_from(ctx)
    try:
        if rubric is not None and not rubric.is_file():
            raise InvalidRequest(f"{rubric}: no such rubric file")
        req = RunRequest(suite, target, model, profile, parse_sample(sample_), concurrency,
                         judge, judge_url, rubric, max_failure_rate, canary, seed,
                         junit_file, report, quiet, durable)
        code = asyncio.run(execute(settings, req))
    except KeelError as exc:
        raise bad_input(exc.message) from None
    raise typer.Exit(code)
