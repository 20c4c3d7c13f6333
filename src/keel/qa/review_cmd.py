"""``keel qa runs``, ``keel qa review`` (mark the judge's false positives, FP rate per
rubric version) and ``keel qa replay`` (a rubric change re-judged on past verdicts)."""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from keel.cli.common import console, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError


def _db_call(settings: Settings, fn: Any) -> Any:
    from keel.qa.suite_cmd import _guard, _with_db

    return _guard(lambda: _with_db(settings, fn))


def runs_cmd(ctx: typer.Context, limit: Annotated[int, typer.Option("--limit")] = 20) -> None:
    """Recent runs: gate, counts, cost."""
    from keel.qa import runs

    settings = settings_from(ctx)
    rows = _db_call(settings, lambda c: runs.list_runs(c, limit))
    table = new_table("run", "started", "suite", "profile", "status", "prompts", "failed",
                      "rate", "swarm $", "judge $", "rubric")
    for r in rows:
        s = r["summary"]
        counts = s.get("counts", {})
        cost = s.get("cost", {})
        table.add_row(r["id"], time.strftime("%m-%d %H:%M", time.gmtime(r["started"])),
                      f"{r['suite']}@{r['version']}", r["profile"], r["status"],
                      str(s.get("settings", {}).get("sample", "")),
                      str(counts.get("failed", 0)), f"{s.get('failure_rate', 0):.1%}",
                      f"{cost.get('swarm_usd', 0):.6f}", f"{cost.get('judge_usd', 0):.6f}",
                      r["rubric_version"] or "-")
    console.print(table)


def review_cmd(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Option("--run", help="only this run")] = None,
    mark: Annotated[int | None, typer.Option("--mark", help="result id to mark")] = None,
    as_: Annotated[str | None, typer.Option("--as", help="fp (judge wrong) or tp")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="FP rate per rubric version")
                     ] = False,
    all_: Annotated[bool, typer.Option("--all", help="include reviewed ones")] = False,
) -> None:
    """Failed evaluations the judge made; mark false positives; FP rate per rubric."""
    from keel.qa import runs
    from keel.qa.cli import bad_input

    settings = settings_from(ctx)
    if mark is not None:
        if as_ not in runs.REVIEWS:
            raise bad_input("--mark needs --as fp or --as tp")
        who = getpass.getuser()
        _db_call(settings, lambda c: runs.mark(c, mark, as_, who))
        console.print(f"result #{mark} marked {as_}")
        return
    if stats:
        table = new_table("rubric", "judged", "judged fail", "reviewed", "false pos.",
                          "FP rate")
        for s in _db_call(settings, runs.rubric_stats):
            table.add_row(s.rubric_version, str(s.judged), str(s.judged_fail),
                          str(s.reviewed), str(s.false_positives),
                          "-" if s.fp_rate is None else f"{s.fp_rate:.1%}")
        console.print(table)
        return
    rows = _db_call(settings, lambda c: runs.failed_results(
        c, run_id=run_id, judged_only=False, unreviewed=not all_))
    table = new_table("id", "run", "prompt", "why", "votes", "review")
    for r in rows:
        v = r["verdict"] or {}
        why = "; ".join(f"{f['check']}" for f in r["checks"]) or (
            f"judge {v.get('category')}: {v.get('reasons', '')}")
        votes = " ".join(x["verdict"] for x in v.get("votes", []))
        table.add_row(str(r["id"]), r["run_id"], r["prompt"][:80], why[:120], votes,
                      r["review"] or "-")
    console.print(table)
    if rows:
        console.print("mark one: keel qa review --mark ID --as fp   (the judge was wrong)")


def replay_cmd(
    ctx: typer.Context,
    rubric: Annotated[Path, typer.Option("--rubric", help="the candidate rubric text")],
    judge: Annotated[str, typer.Option("--judge", help="judge model")],
    judge_url: Annotated[str | None, typer.Option("--judge-url")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="only this run's verdicts")
                      ] = None,
) -> None:
    """Re-judge past verdicts with a candidate rubric: what flips, and against the human
    reviews, how many false positives it fixes and true failures it would miss."""
    from keel.qa.cli import bad_input

    settings = settings_from(ctx)
    if not rubric.is_file():
        raise bad_input(f"{rubric}: no such rubric file")
    try:
        report = asyncio.run(replay(settings, rubric.read_text(encoding="utf-8"), judge,
                                    judge_url, run_id))
    except KeelError as exc:
        raise bad_input(exc.message) from None
    console.print(styled(("replay ", "bold"), f"{report['rubric_version']} on "
                         f"{report['replayed']} verdicts: {report['flipped']} flipped "
                         f"(fail->pass {report['fail_to_pass']}, pass->fail "
                         f"{report['pass_to_fail']}); reviewed: fixes "
                         f"{report['fp_fixed']} of {report['fp_total']} false positives, "
                         f"misses {report['tp_lost']} of {report['tp_total']} true failures"))


async def replay(settings: Settings, rubric: str, judge_model: str, judge_url: str | None,
                 run_id: str | None) -> dict[str, Any]:
    from keel.app import open_database
    from keel.qa import runs
    from keel.qa.judge import Judge
    from keel.qa.run_cmd import judge_backend
    from keel.qa.suites import SuitePrompt

    db = open_database(settings)
    try:
        past = db.transaction(lambda c: runs.judged_results(c, run_id))
    finally:
        db.dispose()
    if not past:
        raise KeelError("no past verdicts to replay (run `keel qa run --judge ...` first)")
    async with judge_backend(settings, judge_model, judge_url) as backend:
        judge = Judge(backend, judge_model, rubric)
        sem = asyncio.Semaphore(16)

        async def one(r: dict[str, Any]) -> str:
            async with sem:
                v = await judge.judge(SuitePrompt(id=r["prompt_id"], prompt=r["prompt"]),
                                      r["reply"], r["context"] or "")
                return v.verdict

        new = await asyncio.gather(*(one(r) for r in past))
    old = [r["verdict"]["verdict"] for r in past]
    rev = [r["review"] for r in past]
    return {
        "rubric_version": judge.version, "replayed": len(past),
        "flipped": sum(a != b for a, b in zip(old, new, strict=True)),
        "fail_to_pass": sum(a == "fail" and b == "pass" for a, b in zip(old, new, strict=True)),
        "pass_to_fail": sum(a == "pass" and b == "fail" for a, b in zip(old, new, strict=True)),
        "fp_total": rev.count("fp"), "tp_total": rev.count("tp"),
        "fp_fixed": sum(r == "fp" and b == "pass" for r, b in zip(rev, new, strict=True)),
        "tp_lost": sum(r == "tp" and b == "pass" for r, b in zip(rev, new, strict=True)),
    }
