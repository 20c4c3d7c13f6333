"""The swarm: fire a suite's prompts at a target, check, judge, and decide the gate.

``Swarm.run`` is the whole run in this process (asyncio, ``concurrency`` prompts in
flight over one pooled connection); ``evaluate_one`` is one prompt, the unit a durable
run hands to queue workers (:mod:`keel.qa.durable`).

The gate blocks when any *hard* finding occurs (more than ``max_hard_failures``,
default 0: a leaked system prompt or broken JSON is never acceptable), or when the share
of failed prompts (hard, soft or judged) is above ``max_failure_rate``.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.errors import InvalidRequest, KeelError
from keel.qa.chat import ChatBackend
from keel.qa.checks import CheckConfig, Finding, run_checks
from keel.qa.judge import Judge, Verdict
from keel.qa.suites import SuitePrompt

MAX_REPLY_CHARS = 8000


@dataclass(frozen=True)
class GateConfig:
    max_failure_rate: float = 0.02
    max_hard_failures: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.max_failure_rate <= 1:
            raise InvalidRequest("max_failure_rate must be between 0 and 1")
        if self.max_hard_failures < 0:
            raise InvalidRequest("max_hard_failures must be >= 0")


@dataclass
class PromptResult:
    prompt: SuitePrompt
    reply: str
    latency_ms: float
    findings: list[Finding]
    verdict: Verdict | None = None
    context: str = ""
    target_cost_usd: float = 0.0

    @property
    def hard(self) -> bool:
        return any(f.hard for f in self.findings)

    @property
    def failed(self) -> bool:
        return bool(self.findings) or (self.verdict is not None
                                       and self.verdict.verdict == "fail")

    @property
    def reason(self) -> str:
        if self.findings:
            return "; ".join(f"{f.check}: {f.detail}" for f in self.findings)
        if self.verdict is not None and self.verdict.verdict == "fail":
            return f"judge ({self.verdict.category}): {self.verdict.reasons}"
        return ""


@dataclass
class RunOutcome:
    results: list[PromptResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.results)

    def counts(self) -> dict[str, int]:
        c: Counter[str] = Counter()
        for r in self.results:
            c["failed" if r.failed else "passed"] += 1
            c["hard"] += r.hard
            c["judged_fail"] += bool(r.verdict and r.verdict.verdict == "fail")
            c["flaky_verdicts"] += bool(r.verdict and r.verdict.flaky)
            for f in r.findings:
                c["check:" + f.check] += 1
        return dict(c)

    def failure_rate(self) -> float:
        return sum(r.failed for r in self.results) / self.n if self.n else 0.0

    def blocked(self, gate: GateConfig) -> tuple[bool, str]:
        hard = sum(r.hard for r in self.results)
        rate = self.failure_rate()
        if hard > gate.max_hard_failures:
            return True, (f"{hard} hard failure(s) (system prompt leak, broken JSON, empty "
                          f"reply or target error) > {gate.max_hard_failures} allowed")
        if rate > gate.max_failure_rate:
            return True, f"failure rate {rate:.1%} > {gate.max_failure_rate:.1%}"
        return False, f"failure rate {rate:.1%} <= {gate.max_failure_rate:.1%}, no hard failure"

    def costs(self) -> dict[str, float]:
        return {"swarm_usd": round(sum(r.target_cost_usd for r in self.results), 8),
                "judge_usd": round(sum(r.verdict.cost_usd for r in self.results
                                       if r.verdict), 8)}


def sample(prompts: Sequence[SuitePrompt], size: int | None,
           seed: int | None = None) -> list[SuitePrompt]:
    """``size`` prompts at random (all when ``None``), in suite order."""
    if not prompts:
        raise InvalidRequest("the suite is empty: nothing to run")
    if size is None or size >= len(prompts):
        if size is not None and size > len(prompts):
            raise InvalidRequest(f"--sample {size} is larger than the suite "
                                 f"({len(prompts)} prompts): use --sample all")
        return list(prompts)
    if size < 1:
        raise InvalidRequest("--sample must be at least 1 (or 'all')")
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(prompts)), size))
    return [prompts[i] for i in idx]


def request_body(p: SuitePrompt, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model,
                            "messages": [{"role": "user", "content": p.prompt}]}
    if p.wants_json:
        body["response_format"] = {"type": "json_object"}
    return body


async def evaluate_one(p: SuitePrompt, target: ChatBackend, model: str, checks: CheckConfig,
                       judge: Judge | None) -> PromptResult:
    try:
        ans = await target.chat(request_body(p, model))
    except KeelError as exc:
        return PromptResult(p, "", 0.0, run_checks(p, "", 0.0, checks, error=exc.message))
    reply = ans.text[:MAX_REPLY_CHARS]
    findings = run_checks(p, reply, ans.latency_ms, checks)
    verdict = None
    if judge is not None and not any(f.hard for f in findings):
        verdict = await judge.judge(p, reply, ans.context)
    return PromptResult(p, reply, ans.latency_ms, findings, verdict, ans.context,
                        ans.cost_usd)


class Swarm:
    def __init__(self, target: ChatBackend, model: str, *, checks: CheckConfig,
                 judge: Judge | None = None, concurrency: int = 50) -> None:
        if not 1 <= concurrency <= 1000:
            raise InvalidRequest("--concurrency must be between 1 and 1000")
        self.target = target
        self.model = model
        self.checks = checks
        self.judge = judge
        self.concurrency = concurrency

    async def run(self, prompts: Sequence[SuitePrompt],
                  on_result: Callable[[PromptResult], Awaitable[None] | None] | None = None
                  ) -> RunOutcome:
        """Every prompt once; ``on_result`` sees each result as it lands (awaited when it
        returns an awaitable: a durable run stores each one before the next is counted)."""
        out = RunOutcome()
        queue: asyncio.Queue[SuitePrompt] = asyncio.Queue()
        for p in prompts:
            queue.put_nowait(p)

        async def worker() -> None:
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                r = await evaluate_one(p, self.target, self.model, self.checks, self.judge)
                if on_result is not None:
                    pending = on_result(r)
                    if inspect.isawaitable(pending):
                        await pending
                out.results.append(r)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(prompts)))))
        out.wall_s = time.perf_counter() - t0
        order = {p.id: i for i, p in enumerate(prompts)}
        out.results.sort(key=lambda r: order[r.prompt.id])
        return out
