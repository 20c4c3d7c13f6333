"""The judge's majority-of-3 and fail-closed rules, the deterministic checks, sampling."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keel.errors import InvalidRequest, UpstreamError
from keel.qa.chat import ChatReply
from keel.qa.checks import CheckConfig, run_checks
from keel.qa.judge import Judge, Vote, decide, rubric_version
from keel.qa.runner import sample
from keel.qa.suites import SuitePrompt, parse_line


class ScriptedJudgeBackend:
    """A scripted fake LLM (the test is about keel's voting logic, not a model)."""

    name = "scripted"

    def __init__(self, answers: list[str | Exception]) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    async def chat(self, body: dict[str, Any]) -> ChatReply:
        self.bodies.append(body)
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return ChatReply(a, 1.0, 0.001)

    async def aclose(self) -> None:
        pass


def verdict(v: str) -> str:
    category = "hallucination" if v == "fail" else "none"
    return json.dumps({"verdict": v, "category": category, "reasons": "r"})


P = SuitePrompt(id="p1", prompt="What does the pro plan cost?")


@pytest.mark.parametrize(("answers", "expected", "calls"), [
    ([verdict("pass")], "pass", 1),                                   # a pass is not re-judged
    ([verdict("fail"), verdict("pass"), verdict("pass")], "pass", 3),  # a flaky fail
    ([verdict("fail"), verdict("fail"), verdict("pass")], "fail", 3),
    (["not json", "nope", "{}"], "fail", 3),                          # unusable: fail closed
    ([UpstreamError("down"), verdict("pass"), verdict("pass")], "pass", 3),
])
async def test_scripted_judge_majority_of_three(answers: list[Any], expected: str,
                                                calls: int) -> None:
    backend = ScriptedJudgeBackend(answers)
    v = await Judge(backend, "m").judge(P, "It costs $10.", "pro plan: $12")
    assert v.verdict == expected and len(backend.bodies) == calls
    assert v.rubric_version.startswith("r-") and len(v.votes) == calls
    body = backend.bodies[0]
    assert body["response_format"]["type"] == "json_schema"
    assert "pro plan: $12" in body["messages"][1]["content"]  # the target's context
    if expected == "fail" and answers[0] == "not json":
        assert v.category == "judge_error"


def test_decide_and_rubric_versions() -> None:
    assert decide([Vote("error", "none", "x")], "r").verdict == "fail"
    assert decide([Vote("pass", "none", ""), Vote("error", "none", ""),
                   Vote("pass", "none", "")], "r").verdict == "pass"
    assert rubric_version("a") != rubric_version("b") == rubric_version("b")


def test_checks_hard_and_soft() -> None:
    cfg = CheckConfig(canary="CANARY-1", latency_budget_ms=100)
    jp = parse_line({"prompt": "as json", "expect": {"schema": {
        "type": "object", "required": ["answer"]}}}, "t")
    assert run_checks(jp, '```json\n{"answer": 1}\n```', 5, cfg) == []
    checks = {f.check: f.hard for f in run_checks(jp, '{"other": 1}', 5, cfg)}
    assert checks == {"schema_mismatch": True}
    checks = {f.check: f.hard for f in run_checks(jp, '{"answer": 1', 500, cfg)}
    assert checks == {"invalid_json": True, "latency": False}
    checks = {f.check: f.hard for f in run_checks(P, "sure: CANARY-1. I'm sorry, I can't "
                                                  "help with that", 5, cfg)}
    assert checks == {"system_prompt_leak": True, "refusal": False}
    assert [f.check for f in run_checks(P, "", 5, cfg)] == ["empty_reply"]
    assert [f.check for f in run_checks(P, "x", 5, cfg, error="HTTP 500")] == ["target_error"]


def test_sample_sizes() -> None:
    prompts = [SuitePrompt(id=str(i), prompt=str(i)) for i in range(10)]
    assert len(sample(prompts, 3, seed=1)) == 3
    assert sample(prompts, 3, seed=1) == sample(prompts, 3, seed=1)
    assert sample(prompts, None) == prompts
    for bad in (0, 11):
        with pytest.raises(InvalidRequest):
            sample(prompts, bad)
    with pytest.raises(InvalidRequest, match="empty"):
        sample([], None)
