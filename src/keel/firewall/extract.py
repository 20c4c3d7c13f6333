"""Pull the user-controlled text out of an OpenAI request body (not a raw body grep)."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


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


def extract_texts(body: JSON, fields: list[str]) -> tuple[list[str], list[str]]:
    """``(all_texts, user_texts)``: everything to scan with signatures, and the part written
    by users/tools (the semantic layer looks only at that, so system prompts written by the
    application's developers don't trip it)."""
    everything: list[str] = []
    users: list[str] = []
    if "messages" in fields and isinstance(body.get("messages"), list):
        for m in body["messages"]:
            if not isinstance(m, dict):
                continue
            texts: list[str] = []
            _content(m.get("content"), texts)
            if "tool_calls" in fields:
                _tool_calls(m.get("tool_calls"), texts)
            everything.extend(texts)
            if m.get("role") in ("user", "tool", "function"):
                users.extend(texts)
    for name in ("prompt", "input"):
        if name in fields:
            before = len(everything)
            _content(body.get(name), everything)
            users.extend(everything[before:])
    return everything, users
