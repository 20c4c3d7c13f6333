"""The suite builder's handling of generator answers that are schema-valid but unusable."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from keel.qa.builder import LogRecord, SuiteBuilder
from keel.qa.chat import ChatReply
from keel.sanitize import Sanitizer


class Scripted:
    name = "scripted"

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls = 0

    async def chat(self, body: dict[str, Any]) -> ChatReply:
        doc = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return ChatReply(orjson.dumps(doc).decode(), 1.0, 0.001)


BLANK = {"persona": "a user", "prompts": [{"prompt": "    ", "expects_json": False}]}
GOOD = {"persona": "a user", "prompts": [{"prompt": "Export my notes", "expects_json": True}]}


def generate(answers: list[dict[str, Any]]) -> tuple[list[Any], Any, Scripted]:
    from keel.qa.builder import BuildReport

    gen = Scripted(answers)
    builder = SuiteBuilder(Sanitizer(key=b"k" * 32), gen, "m", None,  # type: ignore[arg-type]
                           prompts_per_user=2)
    report = BuildReport(records=1)
    out = asyncio.run(builder.generate("<USER_1>", [LogRecord("line 1", "hi")], report))
    return out, report, gen


def test_blank_prompts_get_one_more_sample_and_its_cost_is_counted() -> None:
    out, report, gen = generate([BLANK, GOOD])
    assert [p.prompt for p in out] == ["Export my notes"] and out[0].expect == {"json": True}
    assert gen.calls == 2 and report.unusable_answers == 0
    assert abs(report.cost_usd - 0.002) < 1e-9


def test_a_user_is_unusable_after_two_blank_answers() -> None:
    out, report, gen = generate([BLANK, {"persona": " ", "prompts": []}, GOOD])
    assert out == [] and gen.calls == 2 and report.unusable_answers == 1
