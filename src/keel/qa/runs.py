"""Runs and per-prompt results in the QA tables; the review loop's queries."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Integer, func, select, update

from keel.errors import InvalidRequest, NotFound
from keel.qa import tables as t
from keel.qa.checks import Finding
from keel.qa.judge import Verdict, Vote
from keel.qa.runner import PromptResult, RunOutcome
from keel.qa.suites import SuitePrompt


def start_run(c: Connection, run_id: str, *, suite: str, version: str, target: str,
              profile: str, rubric_version: str | None, settings: dict[str, Any]) -> None:
    c.execute(t.runs.insert().values(
        id=run_id, suite=suite, version=version, target=target[:500], profile=profile,
        started=time.time(), status="running", rubric_version=rubric_version,
        summary=orjson.dumps({"settings": settings}).decode()))


def add_results(c: Connection, run_id: str, results: list[PromptResult]) -> None:
    if not results:
        return
    c.execute(t.results.insert(), [{
        "run_id": run_id, "prompt_id": r.prompt.id, "prompt": r.prompt.prompt,
        "reply": r.reply, "latency_ms": r.latency_ms,
        "outcome": "fail" if r.failed else "pass",
        "checks": orjson.dumps([f.as_dict() for f in r.findings]).decode(),
        "verdict": orjson.dumps(r.verdict.as_dict()).decode() if r.verdict else None,
        "rubric_version": r.verdict.rubric_version if r.verdict else None,
        "context": r.context or None} for r in results])


def upsert_results(c: Connection, run_id: str, results: list[PromptResult]) -> None:
    """Results of a retried batch replace the rows an interrupted attempt wrote."""
    ids = [r.prompt.id for r in results]
    if ids:
        c.execute(t.results.delete().where(t.results.c.run_id == run_id,
                                           t.results.c.prompt_id.in_(ids)))
    add_results(c, run_id, results)


def count_results(c: Connection, run_id: str) -> int:
    return int(c.execute(select(func.count()).select_from(t.results)
                         .where(t.results.c.run_id == run_id)).scalar_one())


def outcome_of(c: Connection, run_id: str, prompts: list[SuitePrompt], *,
               only: bool = False) -> RunOutcome:
    """A stored run rebuilt for its reports (the judge's votes as stored); ``only``: the
    stored results of ``prompts`` alone (what a resumed batch has done already)."""
    by_id = {p.id: p for p in prompts}
    out = RunOutcome()
    q = select(t.results).where(t.results.c.run_id == run_id)
    if only:
        q = q.where(t.results.c.prompt_id.in_(list(by_id)))
    for r in c.execute(q.order_by(t.results.c.id)):
        v = orjson.loads(r.verdict) if r.verdict else None
        verdict = Verdict(v["verdict"], v["category"], v["reasons"],
                          [Vote(**x) for x in v["votes"]], v["rubric_version"],
                          v["cost_usd"]) if v else None
        findings = [Finding(**f) for f in orjson.loads(r.checks)]
        p = by_id.get(r.prompt_id) or SuitePrompt(id=r.prompt_id, prompt=r.prompt)
        out.results.append(PromptResult(p, r.reply, r.latency_ms, findings, verdict,
                                        r.context or ""))
    order = {p.id: i for i, p in enumerate(prompts)}
    out.results.sort(key=lambda x: order.get(x.prompt.id, len(order)))
    return out


def finish_run(c: Connection, run_id: str, status: str, summary: dict[str, Any]) -> None:
    row = c.execute(select(t.runs.c.summary).where(t.runs.c.id == run_id)).first()
    merged = {**(orjson.loads(row.summary) if row else {}), **summary}
    c.execute(update(t.runs).where(t.runs.c.id == run_id).values(
        finished=time.time(), status=status, summary=orjson.dumps(merged).decode()))


def list_runs(c: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = c.execute(select(t.runs).order_by(t.runs.c.started.desc()).limit(limit))
    return [{**r._asdict(), "summary": orjson.loads(r.summary)} for r in rows]


def get_run(c: Connection, run_id: str) -> dict[str, Any]:
    r = c.execute(select(t.runs).where(t.runs.c.id == run_id)).first()
    if r is None:
        raise NotFound(f"no QA run {run_id!r} (see `keel qa runs`)")
    return {**r._asdict(), "summary": orjson.loads(r.summary)}


def _result(r: Any) -> dict[str, Any]:
    d: dict[str, Any] = r._asdict()
    d["checks"] = orjson.loads(d["checks"])
    d["verdict"] = orjson.loads(d["verdict"]) if d["verdict"] else None
    return d


def failed_results(c: Connection, *, run_id: str | None = None, judged_only: bool = False,
                   unreviewed: bool = False, limit: int = 100) -> list[dict[str, Any]]:
    q = select(t.results).where(t.results.c.outcome == "fail")
    if run_id:
        q = q.where(t.results.c.run_id == run_id)
    if judged_only:
        q = q.where(t.results.c.verdict.is_not(None))
    if unreviewed:
        q = q.where(t.results.c.review.is_(None))
    return [_result(r) for r in c.execute(q.order_by(t.results.c.id.desc()).limit(limit))]


def judged_results(c: Connection, run_id: str | None = None) -> list[dict[str, Any]]:
    q = select(t.results).where(t.results.c.verdict.is_not(None))
    if run_id:
        q = q.where(t.results.c.run_id == run_id)
    return [_result(r) for r in c.execute(q.order_by(t.results.c.id))]


REVIEWS = ("fp", "tp")


def mark(c: Connection, result_id: int, review: str, reviewer: str) -> None:
    """A human's call on a judged failure: ``fp`` (the judge was wrong) or ``tp``."""
    if review not in REVIEWS:
        raise InvalidRequest(f"review must be one of {', '.join(REVIEWS)}")
    row = c.execute(select(t.results.c.outcome, t.results.c.verdict).where(
        t.results.c.id == result_id)).first()
    if row is None:
        raise NotFound(f"no QA result #{result_id}")
    if row.outcome != "fail" or row.verdict is None:
        raise InvalidRequest(f"result #{result_id} is not a judged failure: only the "
                             "judge's fails are reviewed")
    c.execute(update(t.results).where(t.results.c.id == result_id).values(
        review=review, reviewer=reviewer[:200], reviewed_at=time.time()))


@dataclass(frozen=True)
class RubricStats:
    rubric_version: str
    judged: int
    judged_fail: int
    reviewed: int
    false_positives: int

    @property
    def fp_rate(self) -> float | None:
        """False positives among the reviewed judge fails."""
        return self.false_positives / self.reviewed if self.reviewed else None


def rubric_stats(c: Connection) -> list[RubricStats]:
    r = t.results
    rows = c.execute(select(
        r.c.rubric_version, func.count(),
        func.sum((r.c.outcome == "fail").cast(Integer)),
        func.sum(r.c.review.is_not(None).cast(Integer)),
        func.sum((r.c.review == "fp").cast(Integer)),
    ).where(r.c.verdict.is_not(None)).group_by(r.c.rubric_version))
    return [RubricStats(v or "-", n, int(f or 0), int(rv or 0), int(fp or 0))
            for v, n, f, rv, fp in rows]


def save_rubric(c: Connection, version: str, text: str) -> None:
    if c.execute(select(t.rubrics.c.version).where(t.rubrics.c.version == version)).first():
        return
    c.execute(t.rubrics.insert().values(version=version, created=time.time(), text=text))
