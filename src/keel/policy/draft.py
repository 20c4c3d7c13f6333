"""Plain English -> Cedar: ask the configured chat model, validate, repair, explain.

The model answers through JSON-schema constrained output (``{"policy": "<cedar text>"}``), so
even the tiny default model returns well-formed JSON. The text is validated against the tool
schema; Cedar's error goes back to the model for up to ``repairs`` more rounds. The outcome
is either a formatted, schema-valid policy with example requests on both sides of each rule,
or a clear failure listing every attempt and why Cedar rejected it. Nothing is enforced
until ``keel policy apply``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cedarpy
import orjson

from keel.errors import InvalidPolicy
from keel.policy.authorizer import Authorizer, PolicySnapshot
from keel.policy.examples import Example, examples
from keel.providers.registry import ModelRegistry

Messages = list[dict[str, str]]
Complete = Callable[[Messages], Awaitable[str]]

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"policy": {"type": "string", "maxLength": 2000}},
    "required": ["policy"],
    "additionalProperties": False,
}

GUIDE = """You write Cedar authorization policies for an AI agent tool gateway.
Each tool is an action; the principal is Agent (id "<tenant>/<agent>"; attributes tenant,
name, roles); the resource is Tool.
The context holds the tool's arguments plus context.now (hour 0-23, minute, weekday 1=Monday..
7=Sunday, day, month, year) and context.session (id, spend_cents). Money is what the schema
says: a Long in cents ($50 = 5000) or a decimal (context.amount > decimal("50.00")).
Everything is denied unless a permit matches; a forbid always wins.
Example:
@id("refunds-small")
permit(principal, action == Action::"issue_refund", resource)
when { context.amount_cents <= 5000 };
@id("no-night-reads")
forbid(principal, action == Action::"read_customer", resource)
unless { context.now.hour >= 9 && context.now.hour < 17 };
Add @approval("required") above a permit to make a human approve matching calls.
Answer with JSON: {"policy": "<the Cedar policies>"}."""


@dataclass(frozen=True)
class Attempt:
    answer: str
    policy: str
    problem: str | None


@dataclass
class DraftResult:
    request: str
    ok: bool
    policy: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    error: str | None = None


def schema_for_prompt(authorizer: Authorizer) -> str:
    return authorizer.schema_text.replace("__cedar::", "")


def extract_policy(answer: str) -> str:
    """The Cedar text in the model's answer (raises InvalidPolicy when there is none)."""
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        raise InvalidPolicy("the model's answer is not JSON") from None
    policy = data.get("policy") if isinstance(data, dict) else None
    if not isinstance(policy, str) or not policy.strip():
        raise InvalidPolicy("the model's answer has no non-empty 'policy' string")
    return policy.strip()


class PolicyDrafter:
    def __init__(self, authorizer: Authorizer, complete: Complete, *, repairs: int = 3) -> None:
        self.authorizer = authorizer
        self.complete = complete
        self.repairs = repairs

    async def draft(self, request: str) -> DraftResult:
        if not request.strip():
            raise InvalidPolicy("describe the policy in plain English, e.g. \"agents can "
                                "never issue refunds over $50\"")
        result = DraftResult(request=request, ok=False)
        messages: Messages = [
            {"role": "system", "content": GUIDE},
            {"role": "user", "content": f"Cedar schema:\n{schema_for_prompt(self.authorizer)}"
                                        f"\n\nWrite Cedar policies for: {request}"},
        ]
        for _ in range(1 + self.repairs):
            answer = await self.complete(messages)
            policy = ""
            try:
                policy = extract_policy(answer)
                snap = self.authorizer.validate(policy)
            except InvalidPolicy as exc:
                result.attempts.append(Attempt(answer, policy, exc.message))
                messages += [{"role": "assistant", "content": answer},
                             {"role": "user", "content": f"Cedar rejected that: {exc.message}\n"
                                                         "Return the corrected policy as JSON."}]
                continue
            formatted = cedarpy.format_policies(policy)
            snap = PolicySnapshot(None, formatted, snap.policies, snap.labels, snap.approval)
            result.attempts.append(Attempt(answer, formatted, None))
            result.ok, result.policy = True, formatted
            result.examples = examples(self.authorizer, snap)
            return result
        last = result.attempts[-1].problem if result.attempts else "no answer"
        result.error = (f"the model did not produce a valid Cedar policy in {len(result.attempts)}"
                        f" attempts (last problem: {last}). Write the policy by hand, or point "
                        "tools.policy.draft_model at a more capable model")
        return result


def model_completer(models: ModelRegistry, name: str, *, max_tokens: int = 400) -> Complete:
    """A ``Complete`` over the model table: JSON-schema constrained chat, temperature 0."""
    spec = models.get(name)
    provider = models.provider(spec)

    async def complete(messages: Messages) -> str:
        body = {"model": spec.upstream_model, "messages": messages, "temperature": 0,
                "max_tokens": max_tokens,
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "cedar_policy", "schema": ANSWER_SCHEMA}}}
        resp = await provider.chat(body, spec)
        choices = resp.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else ""

    return complete
