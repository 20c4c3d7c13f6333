"""Fast, hand-written validation of OpenAI request bodies with messages that say what to fix.

Only fields keel itself relies on are checked strictly; unknown fields pass through to
the provider untouched (OpenAI adds fields often and clients send them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from keel.errors import InvalidRequest, JsonTooDeep, MalformedJSON, MissingField, WrongType

JSON = dict[str, Any]
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TYPES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


# Deeper JSON cannot be stored (orjson serialises at most 254 levels) and no real request
# needs it: every JSON route parses through ``parse_json``, which refuses it up front.
MAX_JSON_DEPTH = 64


def parse_json(raw: bytes) -> JSON:
    if not raw:
        raise MalformedJSON("request body is empty: send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedJSON(
            f"request body must be a JSON object, got {type(body).__name__}"
        )
    # Counting brackets (in C) bounds the depth: only bodies with many of them are walked.
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_DEPTH:
        check_depth(body)
    return body


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH, where: str = "request body") -> None:
    """Refuse JSON nested deeper than ``limit`` arrays/objects (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            raise JsonTooDeep(f"{where} is nested more than {limit} levels deep; flatten it")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values() if isinstance(x, dict | list))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v if isinstance(x, dict | list))


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    return {str: "string", int: "integer", float: "number", list: "array", dict: "object"}.get(
        type(v), type(v).__name__
    )


def only_fields(body: JSON, allowed: Iterable[str]) -> None:
    """Refuse fields an endpoint does not take: a misspelt optional field must not be
    ignored (a flush without its misspelt ``tenant`` would flush every tenant)."""
    known = set(allowed)
    unknown = sorted(set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; this endpoint takes "
                             f"{', '.join(sorted(known))}", param=unknown[0])


def require(body: JSON, name: str, typ: type, *, where: str = "") -> Any:
    if name not in body or body[name] is None:
        raise MissingField(f"missing required field '{where}{name}'", param=where + name)
    return check(body, name, typ, where=where)


def check(body: JSON, name: str, typ: type, *, where: str = "") -> Any:
    v = body.get(name)
    if v is None:
        return None
    ok = isinstance(v, typ) and not (typ in (int, float) and isinstance(v, bool))
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        ok = True
    if not ok:
        got = _type_name(v)
        if typ is int and isinstance(v, float) and v.is_integer():
            # JSON parsers read integers beyond 64 bits as floats
            got = f"{v:.0f}, which is too large (or written with a decimal point)"
        raise WrongType(
            f"field '{where}{name}' must be {_TYPES.get(typ, typ.__name__)}, got {got}",
            param=where + name,
        )
    return v


def _range(body: JSON, name: str, lo: float, hi: float) -> None:
    v = check(body, name, float)
    if v is not None and not lo <= v <= hi:
        raise InvalidRequest(f"field '{name}' must be between {lo:g} and {hi:g}, got {v}",
                             param=name)


def _common(body: JSON) -> None:
    require(body, "model", str)
    check(body, "stream", bool)
    opts = check(body, "stream_options", dict)
    if opts is not None:
        check(opts, "include_usage", bool, where="stream_options.")
    mt = check(body, "max_tokens", int)
    if mt is not None and mt < 1:
        raise InvalidRequest(f"field 'max_tokens' must be >= 1, got {mt}", param="max_tokens")
    mct = check(body, "max_completion_tokens", int)
    if mct is not None and mct < 1:
        raise InvalidRequest(
            f"field 'max_completion_tokens' must be >= 1, got {mct}",
            param="max_completion_tokens",
        )
    _range(body, "temperature", 0.0, 2.0)
    _range(body, "top_p", 0.0, 1.0)
    n = check(body, "n", int)
    if n is not None and not 1 <= n <= 16:
        raise InvalidRequest(f"field 'n' must be between 1 and 16, got {n}", param="n")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise WrongType("field 'stop' must be a string or an array of strings", param="stop")
    check(body, "seed", int)
    check(body, "user", str)
    rf = check(body, "response_format", dict)
    if rf is not None:
        t = rf.get("type")
        if t not in ("text", "json_object", "json_schema"):
            raise InvalidRequest(
                "field 'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                param="response_format.type",
            )
        if t == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
                raise InvalidRequest(
                    "response_format 'json_schema' needs a 'json_schema' object with a "
                    "'schema' object inside",
                    param="response_format.json_schema",
                )


def validate_chat(body: JSON) -> None:
    require(body, "model", str)
    msgs = require(body, "messages", list)
    if not msgs:
        raise InvalidRequest("field 'messages' must contain at least one message",
                             param="messages")
    for i, m in enumerate(msgs):
        where = f"messages[{i}]."
        if not isinstance(m, dict):
            raise WrongType(f"'messages[{i}]' must be an object with 'role' and 'content'",
                            param=f"messages[{i}]")
        role = require(m, "role", str, where=where)
        if role not in _ROLES:
            raise InvalidRequest(
                f"'{where}role' must be one of {', '.join(sorted(_ROLES))}, got {role!r}",
                param=where + "role",
            )
        content = m.get("content")
        if content is None:
            if role != "assistant":
                raise MissingField(f"missing required field '{where}content'",
                                   param=where + "content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise WrongType(
                        f"'{where}content[{j}]' must be an object with a 'type' field",
                        param=f"{where}content[{j}]",
                    )
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise WrongType(f"'{where}content[{j}].text' must be a string",
                                    param=f"{where}content[{j}].text")
        elif not isinstance(content, str):
            raise WrongType(
                f"'{where}content' must be a string or an array of content parts, "
                f"got {_type_name(content)}",
                param=where + "content",
            )
    _common(body)


def validate_completion(body: JSON) -> None:
    require(body, "model", str)
    prompt = require(body, "prompt", object)
    if not isinstance(prompt, str) and not (
        isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
    ):
        # token ids are refused on purpose: the firewall screens prompt text
        raise WrongType("field 'prompt' must be a string or a non-empty array of strings "
                        "(token ids are not accepted: keel screens the prompt's text)",
                        param="prompt")
    _common(body)


def validate_embeddings(body: JSON) -> list[str] | None:
    """Validate; return the inputs as strings (``None`` for token-id inputs)."""
    require(body, "model", str)
    inp = require(body, "input", object)
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(t, str) for t in inp):
        texts = list(inp)
    elif isinstance(inp, list) and inp and all(isinstance(t, (int, list)) for t in inp):
        return None
    else:
        raise WrongType("field 'input' must be a string or a non-empty array of strings",
                        param="input")
    if len(texts) > 2048:
        raise InvalidRequest(f"field 'input' has {len(texts)} items; the limit is 2048",
                             param="input")
    dims = check(body, "dimensions", int)
    if dims is not None and dims < 1:
        raise InvalidRequest(f"field 'dimensions' must be >= 1, got {dims}", param="dimensions")
    enc = check(body, "encoding_format", str)
    if enc not in (None, "float", "base64"):
        raise InvalidRequest("field 'encoding_format' must be 'float' or 'base64'",
                             param="encoding_format")
    return texts


def last_user_text(body: JSON) -> str:
    """Text of the last user message (content parts joined), '' when there is none."""
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""
