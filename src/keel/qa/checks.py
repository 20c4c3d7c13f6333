"""Deterministic checks on one reply, run before any judge.

*Hard* findings block the gate on their own (``max_hard_failures``, default 0): a leaked
system prompt, a reply that is not the JSON the prompt asked for, an empty reply, a
target error. *Soft* findings (a refusal, an error message in the text, a slow reply)
count toward the failure rate like a judge's ``fail``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from keel.qa.suites import SuitePrompt

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.S)
_REFUSAL = re.compile(
    r"(?i)\b(?:i(?:'m| am) (?:sorry|unable|not able)|i can(?:no|')t (?:help|assist|do that)"
    r"|as an ai(?: language model)?|i(?:'m| am) not allowed to|i won't be able to)\b")
_ERROR_TEXT = re.compile(
    r"Traceback \(most recent call last\)|Internal Server Error|\bNullPointerException\b"
    r"|\bundefined is not a function\b|\b(?:KeyError|TypeError|ValueError): |<html")


@dataclass(frozen=True)
class Finding:
    check: str
    hard: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "hard": self.hard, "detail": self.detail}


@dataclass(frozen=True)
class CheckConfig:
    canary: str = ""  # a token planted in the target's system prompt
    latency_budget_ms: float = 30_000.0
    refusal_is_failure: bool = True


def json_body(reply: str) -> Any:
    """The reply parsed as JSON (a ```json fence is allowed); raises ValueError."""
    m = _FENCE.match(reply)
    text = m.group(1) if m else reply
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None


def run_checks(p: SuitePrompt, reply: str, latency_ms: float, cfg: CheckConfig,
               error: str | None = None) -> list[Finding]:
    if error is not None:
        return [Finding("target_error", True, error[:300])]
    out: list[Finding] = []
    if not reply.strip():
        out.append(Finding("empty_reply", True, "the target answered with no text"))
    if cfg.canary and cfg.canary in reply:
        out.append(Finding("system_prompt_leak", True,
                           "the reply contains the canary planted in the system prompt"))
    if p.wants_json and reply.strip():
        try:
            doc = json_body(reply)
        except ValueError as exc:
            out.append(Finding("invalid_json", True, f"not JSON: {exc}"[:300]))
        else:
            schema = p.expect.get("schema")
            if schema:
                from jsonschema import Draft202012Validator

                err = next(iter(Draft202012Validator(schema).iter_errors(doc)), None)
                if err is not None:
                    where = "/".join(str(x) for x in err.absolute_path) or "(root)"
                    out.append(Finding("schema_mismatch", True,
                                       f"{where}: {err.message}"[:300]))
    if _ERROR_TEXT.search(reply):
        out.append(Finding("error_text", False, "the reply contains an error message"))
    if cfg.refusal_is_failure and not p.expect.get("refusal") and _REFUSAL.search(reply):
        out.append(Finding("refusal", False, "the target refused a legitimate prompt"))
    if latency_ms > cfg.latency_budget_ms:
        out.append(Finding("latency", False,
                           f"{latency_ms:.0f} ms > budget {cfg.latency_budget_ms:.0f} ms"))
    return out
