"""Who writes the patch: the configured model (through keel's own pipeline, so metering,
budgets, the firewall and the request log apply), or a scripted fixer in tests and demos.

The model answers under a JSON schema: root cause, a unified diff, a regression test
(path and code) and a one-line summary. Anything else is an unusable proposal: the run
ends safely and a human is paged with what the model said.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, Field, ValidationError

from keel.errors import KeelError

FIX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "root_cause": {"type": "string"},
        "patch": {"type": "string"},
        "test_path": {"type": "string"},
        "test_code": {"type": "string"},
        "summary": {"type": "string"},
    },
    "required": ["root_cause", "patch", "test_path", "test_code", "summary"],
    "additionalProperties": False,
}

SYSTEM = (
    "You fix a production incident in a web service. You get the stack trace, the commits "
    "and diff since the last good deploy, the database schema, the source of the files in "
    "the trace and sample failing requests. Answer with JSON only: root_cause (one or two "
    "sentences), patch (a unified diff against the current HEAD, paths relative to the "
    "repository root, a/ and b/ prefixes), test_path (a new file under the tests directory) "
    "and test_code (a pytest test that fails on the current code and passes with the patch; "
    "the environment variable holding the database URL points at a clone of production), "
    "and summary (one line, used as the commit title). Keep the patch minimal.")


class FixUnusable(KeelError):
    http_status = 422
    type = "invalid_request_error"
    code = "fix_unusable"


class FixProposal(BaseModel):
    model_config = {"extra": "forbid"}

    root_cause: str = Field(min_length=1, max_length=4000)
    patch: str = Field(min_length=1, max_length=100_000)
    test_path: str = Field(min_length=1, max_length=300)
    test_code: str = Field(min_length=1, max_length=100_000)
    summary: str = Field(min_length=1, max_length=300)


@dataclass(frozen=True)
class Proposed:
    fix: FixProposal
    cost_usd: float
    model: str
    request_id: str | None
    usage: dict[str, Any]


class Fixer(Protocol):
    name: str

    async def propose(self, evidence: dict[str, Any], context: dict[str, Any]) -> Proposed: ...


# (body) -> (OpenAI-shaped response, cost in USD, request id)
Chat = Callable[[dict[str, Any]], Awaitable[tuple[dict[str, Any], float, str | None]]]


def prompt(evidence: dict[str, Any], context: dict[str, Any], max_chars: int) -> str:
    """The user turn: the evidence in a fixed order, cut to ``max_chars``."""
    parts = [f"Service: {evidence.get('service')} (tests under {context.get('tests_dir')}/, "
             f"database URL in ${context.get('database_env')})",
             "Stack trace:\n" + (evidence.get("stack_trace") or "(none captured)")]
    reqs = evidence.get("failing_requests") or []
    if reqs:
        parts.append("Failing requests:\n" + "\n".join(
            f"{r.get('method')} {r.get('path')} -> {r.get('status')}: {r.get('request_body')}"
            for r in reqs[-3:]))
    parts.append("Commits since the last good deploy:\n" + (evidence.get("commits_since_good")
                                                           or "(none)"))
    parts.append("Diff since the last good deploy:\n" + (evidence.get("diff_since_good")
                                                        or "(none)"))
    parts.append("Database schema:\n" + (evidence.get("schema") or "(unknown)"))
    for path, src in (evidence.get("files") or {}).items():
        parts.append(f"Current {path}:\n{src}")
    text = "\n\n".join(parts)
    return text[:max_chars]


def parse(content: str) -> FixProposal:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise FixUnusable("the model's answer is not JSON: " + content[:300]) from None
    try:
        return FixProposal.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise FixUnusable(f"the model's answer does not fit the schema: {problems}") from None


class ModelFixer:
    """Asks ``model`` through ``chat`` (keel's InternalClient in the app)."""

    name = "model"

    def __init__(self, chat: Chat, model: str, *, max_tokens: int = 1500,
                 max_prompt_chars: int = 10_000) -> None:
        self.chat = chat
        self.model = model
        self.max_tokens = max_tokens
        self.max_prompt_chars = max_prompt_chars

    async def propose(self, evidence: dict[str, Any], context: dict[str, Any]) -> Proposed:
        body = {
            "model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": prompt(evidence, context,
                                                            self.max_prompt_chars)}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "fix", "schema": FIX_SCHEMA, "strict": True}},
        }
        resp, cost, rid = await self.chat(body)
        try:
            content = resp["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise FixUnusable("the model's response has no message content") from None
        try:
            fix = parse(content)
        except FixUnusable as exc:
            exc.extra.update(cost_usd=cost, request_id=rid, answer=content[:2000])
            raise
        return Proposed(fix, cost, self.model, rid, dict(resp.get("usage") or {}))


class ScriptedFixer:
    """A fixer that returns a proposal written in advance (tests, demos, benchmarks): it
    exercises keel's orchestration without a model. Never the default."""

    name = "scripted"

    def __init__(self, fix: FixProposal | dict[str, Any]) -> None:
        self.fix = fix if isinstance(fix, FixProposal) else FixProposal.model_validate(fix)

    async def propose(self, evidence: dict[str, Any], context: dict[str, Any]) -> Proposed:
        return Proposed(self.fix, 0.0, "scripted", None, {})
