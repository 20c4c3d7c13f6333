"""Request mapping for the local provider: OpenAI bodies -> llama.cpp completion requests.

Pure functions. Chat messages are rendered here: a Question:/Answer: transcript for base
models such as the default Gemma 3 270M, or Gemma turns for instruction-tuned GGUFs.
Sampling fields are validated and mapped to llama.cpp's names; ``response_format``
becomes a JSON-schema constraint.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import orjson

from keel.errors import InvalidRequest, MissingField, WrongType

JSON = dict[str, Any]

# Gemma control tokens. llama.cpp parses special tokens in prompt text, so message text
# containing them could forge turns; a zero-width space keeps them plain text.
_CONTROL_TOKENS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>")
_END_OF_TURN = "<end_of_turn>"
_ROLES = MappingProxyType(
    {"user": "user", "tool": "user", "function": "user", "assistant": "model"}
)


# -- prompt formatting (pure functions) -----------------------------------------------------


def _escape(text: str) -> str:
    if "<" not in text:
        return text
    for tok in _CONTROL_TOKENS:
        text = text.replace(tok, "<\u200b" + tok[1:])
    return text


def message_text(content: Any, where: str) -> str:
    """Flatten OpenAI message content (string or list of text parts) to plain text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise WrongType(f"{where}[{i}].text must be a string", param=f"{where}[{i}]")
                parts.append(text)
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequest(
                    f"{where}[{i}] is a {kind!r} part; the local model takes text only",
                    param=f"{where}[{i}]",
                )
        return "\n".join(parts)
    raise WrongType(f"{where} must be a string or a list of text parts", param=where)


def _turns(messages: Any) -> list[list[str]]:
    """Validated ``[role, text]`` turns, roles ``user``/``model``, system text folded into
    the next user turn, consecutive turns of one role merged."""
    if not isinstance(messages, list) or not messages:
        raise MissingField("`messages` must be a non-empty list", param="messages")
    turns: list[list[str]] = []
    system: list[str] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise WrongType(f"{where} must be an object", param=where)
        role = msg.get("role")
        text = _escape(message_text(msg.get("content"), f"{where}.content"))
        if role in ("system", "developer"):
            system.append(text)
            continue
        turn_role = _ROLES.get(role) if isinstance(role, str) else None
        if turn_role is None:
            raise InvalidRequest(
                f"{where}.role is {role!r}; use system, user, assistant or tool",
                param=f"{where}.role",
            )
        if role == "assistant" and msg.get("tool_calls"):
            calls = orjson.dumps(msg["tool_calls"]).decode()
            text = f"{text}\n{calls}" if text else calls
        elif role in ("tool", "function"):
            text = f"Tool result:\n{text}"
        if turn_role == "user" and system:
            text = "\n\n".join([*system, text])
            system = []
        if turns and turns[-1][0] == turn_role:
            turns[-1][1] += "\n\n" + text
        else:
            turns.append([turn_role, text])
    if system:
        turns.append(["user", "\n\n".join(system)])
    return turns


def gemma_chat_prompt(messages: Any) -> str:
    """Render chat messages in the Gemma turn format, ending with an open model turn.

    For instruction-tuned Gemma GGUFs. System (and developer) messages are folded into the
    next user turn. A final assistant message is left open so the model continues it.
    """
    turns = _turns(messages)
    out: list[str] = []
    for role, text in turns[:-1]:
        out.append(f"<start_of_turn>{role}\n{text}{_END_OF_TURN}\n")
    role, text = turns[-1]
    if role == "model":
        out.append(f"<start_of_turn>model\n{text}")
    else:
        out.append(f"<start_of_turn>{role}\n{text}{_END_OF_TURN}\n<start_of_turn>model\n")
    return "".join(out)


def transcript_prompt(messages: Any) -> str:
    """Render chat messages as a plain ``Question:`` / ``Answer:`` transcript.

    For base models (the default Gemma 3 270M has no chat tuning): they continue a
    transcript far better than unfamiliar turn tokens (measured: "What is the capital of
    France?" -> " Paris" here, garbage with Gemma turn tokens). Generation stops at the
    next ``Question:`` or ``Answer:`` line (:data:`TRANSCRIPT_STOP`).
    """
    out: list[str] = []
    turns = _turns(messages)
    for role, text in turns:
        out.append(f"Question: {text}\n" if role == "user" else f"Answer: {text}\n")
    if turns[-1][0] == "model":
        return "".join(out)[:-1]  # continue the open answer
    return "".join(out) + "Answer:"


# A new "Question:" line ends the answer, and so does a new "Answer:" line: the base model
# likes to write whole transcripts ("2. Q: ...?\nAnswer: 3. ..."), which must not leak.
TRANSCRIPT_STOP = ("\nQuestion:", "\nAnswer:")
CHAT_FORMATS: dict[str, tuple[Any, str | tuple[str, ...]]] = {
    "transcript": (transcript_prompt, TRANSCRIPT_STOP),
    "gemma": (gemma_chat_prompt, _END_OF_TURN),
}


def chat_prompt(messages: Any, chat_format: str) -> tuple[str, str | tuple[str, ...]]:
    """The prompt for ``messages`` in ``chat_format`` and the stop string(s) that end a
    turn."""
    render, stop = CHAT_FORMATS[chat_format]
    return render(messages), stop


# -- request options -------------------------------------------------------------------------


def _number(body: JSON, key: str, lo: float, hi: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WrongType(f"`{key}` must be a number", param=key)
    if not lo <= value <= hi:
        raise InvalidRequest(f"`{key}` must be between {lo:g} and {hi:g}", param=key)
    return float(value)


def _max_tokens(body: JSON, default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise WrongType(f"`{key}` must be an integer", param=key)
        if value < 1:
            raise InvalidRequest(f"`{key}` must be at least 1", param=key)
        return value
    return default


def _stops(body: JSON) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s]
    raise WrongType("`stop` must be a string or a list of strings", param="stop")


# llguidance (llama.cpp's grammar engine) allows free whitespace between JSON tokens by
# default, and a small model falls into it: Gemma 3 270M wrote "\n \n \n..." after the
# last value until max_tokens cut the JSON, on 23 of 40 documents of the batch bench.
# Compact JSON (no whitespace between tokens) removed every such failure; a schema that
# sets its own "x-guidance" options keeps them.
COMPACT = {"whitespace_flexible": False}


def constrained(schema: JSON) -> JSON:
    """``schema`` as keel hands it to llama.cpp: compact JSON unless it says otherwise."""
    return schema if "x-guidance" in schema else {**schema, "x-guidance": COMPACT}


def _json_schema(body: JSON) -> JSON | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON Schema object",
                param="response_format",
            )
        return schema
    raise InvalidRequest(
        "response_format.type must be text, json_object or json_schema", param="response_format"
    )


def _refuse_unsupported(body: JSON) -> None:
    """Fields the local provider cannot honour are a 400, never silently ignored: a client
    that sends tools expects tool calls, one that asks for logprobs expects numbers."""
    if body.get("tools") or body.get("functions"):
        key = "tools" if body.get("tools") else "functions"
        raise InvalidRequest(
            f"the local provider does not support `{key}` (tool calling); use a model served "
            "by an OpenAI-compatible upstream for tools, or drop the field", param=key)
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none", "auto"):
            raise InvalidRequest(f"the local provider does not support `{key}`", param=key)
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        key = "logprobs" if body.get("logprobs") not in (None, False) else "top_logprobs"
        raise InvalidRequest(
            f"the local provider does not return log probabilities; drop `{key}`", param=key)


def llama_request(
    body: JSON, prompt: Any, *, stream: bool, default_max: int,
    turn_stop: str | tuple[str, ...] | None,
) -> JSON:
    """The llama.cpp ``/v1/completions`` body for an OpenAI-shaped request."""
    _refuse_unsupported(body)
    n = body.get("n")
    if n not in (None, 1):
        raise InvalidRequest("the local provider returns one choice; set `n` to 1", param="n")
    req: JSON = {
        "prompt": prompt,
        "stream": stream,
        "max_tokens": _max_tokens(body, default_max),
        "cache_prompt": True,
    }
    for key, lo, hi in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        value = _number(body, key, lo, hi)
        if value is not None:
            req[key] = value
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise WrongType("`seed` must be an integer", param="seed")
        req["seed"] = seed % 0xFFFFFFFF  # 0xFFFFFFFF itself means "random" to llama.cpp
    stops = _stops(body)
    if isinstance(turn_stop, str):
        stops.append(turn_stop)
    elif turn_stop:
        stops.extend(turn_stop)
    if stops:
        req["stop"] = stops
    schema = _json_schema(body)
    if schema is not None:
        from keel.providers.grammar_check import ensure_compiles

        ensure_compiles(schema)  # llama.cpp would run an uncompilable one unconstrained
        req["json_schema"] = constrained(schema)
    return req


def _refuse_completion_options(body: JSON) -> None:
    """``/v1/completions`` options the local provider cannot honour are a 400 too: a client
    that asks for ``echo`` expects the prompt back, ``best_of`` a choice among several, a
    ``suffix`` an insertion. Their no-op values are accepted."""
    if body.get("echo") not in (None, False):
        raise InvalidRequest("the local provider does not echo the prompt; drop `echo` or "
                             "set it to false", param="echo")
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest("the local provider generates one completion; drop `best_of` "
                             "or set it to 1", param="best_of")
    if body.get("suffix") not in (None, ""):
        raise InvalidRequest("the local provider does not insert text before a `suffix`; "
                             "drop `suffix`", param="suffix")


def completion_prompt(body: JSON) -> Any:
    """The prompt of a ``/v1/completions`` body as llama.cpp takes it (one string or one
    list of token ids); options that cannot be honoured are refused here."""
    _refuse_completion_options(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return prompt  # token ids
    if prompt is None:
        raise MissingField("`prompt` is required", param="prompt")
    raise InvalidRequest(
        "`prompt` must be one string for the local provider: send one request per prompt",
        param="prompt",
    )


def usage_block(chunk: JSON) -> JSON:
    raw = chunk.get("usage") or {}
    usage: JSON = {
        "prompt_tokens": int(raw.get("prompt_tokens", 0)),
        "completion_tokens": int(raw.get("completion_tokens", 0)),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if raw.get("prompt_tokens_details"):
        usage["prompt_tokens_details"] = raw["prompt_tokens_details"]
    return usage
