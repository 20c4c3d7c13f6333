"""Pull the texts the firewall judges out of an OpenAI request body, by role.

Only text that comes from outside the application is judged: user turns, tool/function
results (indirect injection: a web page or an e-mail the tool fetched) and a completion's
``prompt``. System and developer prompts are the operator's text and earlier assistant turns
(content and tool-call arguments) are the model's own; they are never a reason to block, so
they are returned apart (``context``), e.g. for a canary-token leak check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]
# roles whose text the firewall judges; "prompt" is a completion's prompt (user text)
JUDGED_ROLES = frozenset({"user", "tool", "function", "prompt"})
CONTEXT_ROLES = frozenset({"system", "developer", "assistant"})


@dataclass(frozen=True, slots=True)
class ScanItem:
    """One text of a request and who wrote it."""

    role: str  # user | tool | function | prompt (judged); system | developer | assistant
    text: str


def _content(content: Any, out: list[str]) -> None:
    if isinstance(content, str):
        out.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)


def _tool_calls(calls: Any, out: list[str]) -> None:
    if not isinstance(calls, list):
        return
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
            out.append(fn["arguments"])


def extract_items(body: JSON, fields: list[str]) -> tuple[list[ScanItem], list[ScanItem]]:
    """``(judged, context)``: the texts to judge and the operator's / model's own texts.

    A message whose role is not one of OpenAI's is judged (never silently skipped); the
    chat validator refuses such messages before the firewall sees them anyway."""
    judged: list[ScanItem] = []
    context: list[ScanItem] = []
    if "messages" in fields and isinstance(body.get("messages"), list):
        for m in body["messages"]:
            if not isinstance(m, dict):
                continue
            role = m.get("role")
            role = role if isinstance(role, str) else "user"
            texts: list[str] = []
            _content(m.get("content"), texts)
            if "tool_calls" in fields:
                _tool_calls(m.get("tool_calls"), texts)
            out = context if role in CONTEXT_ROLES else judged
            out.extend(ScanItem(role, t) for t in texts)
    for name in ("prompt", "input"):
        if name in fields:
            texts = []
            _content(body.get(name), texts)
            judged.extend(ScanItem("prompt", t) for t in texts)
    return judged, context


def judged_texts(body: JSON, fields: list[str]) -> list[str]:
    return [i.text for i in extract_items(body, fields)[0]]
