"""Pipeline composition and request validation (pure logic)."""

from __future__ import annotations

import pytest

from keel.config import load_settings
from keel.errors import InvalidRequest, KeelError, MissingField, WrongType
from keel.gateway.context import ANONYMOUS, RequestContext
from keel.gateway.pipeline import Next, Pipeline
from keel.gateway.validation import (
    last_user_text,
    validate_chat,
    validate_completion,
    validate_embeddings,
)


def ctx() -> RequestContext:
    spec = load_settings(None).model_table()[0]
    return RequestContext(id="r", route="chat", body={}, model=spec, principal=ANONYMOUS,
                          client_ip="127.0.0.1", headers={})


class Recorder:
    def __init__(self, name: str, trail: list[str], stop: bool = False) -> None:
        self.name, self.trail, self.stop = name, trail, stop

    async def __call__(self, c: RequestContext, call_next: Next) -> None:
        self.trail.append(f"{self.name}:in")
        if self.stop:
            c.response = {"short": self.name}
            c.decide(self.name, "short-circuit")
        else:
            await call_next(c)
        self.trail.append(f"{self.name}:out")


async def test_stages_run_in_order_around_terminal() -> None:
    trail: list[str] = []

    async def terminal(c: RequestContext) -> None:
        trail.append("terminal")

    p = Pipeline([Recorder("a", trail), Recorder("b", trail)], terminal)
    await p(ctx())
    assert trail == ["a:in", "b:in", "terminal", "b:out", "a:out"]


async def test_stage_can_short_circuit() -> None:
    trail: list[str] = []

    async def terminal(c: RequestContext) -> None:
        trail.append("terminal")

    c = ctx()
    await Pipeline([Recorder("a", trail, stop=True), Recorder("b", trail)], terminal)(c)
    assert trail == ["a:in", "a:out"]
    assert c.response == {"short": "a"} and c.decisions[0].stage == "a"


def test_duplicate_stage_names_rejected() -> None:
    async def terminal(c: RequestContext) -> None: ...

    with pytest.raises(ValueError, match="duplicate"):
        Pipeline([Recorder("a", []), Recorder("a", [])], terminal)


@pytest.mark.parametrize(
    ("body", "exc", "needle"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, MissingField, "'model'"),
        ({"model": "m", "messages": []}, InvalidRequest, "at least one"),
        ({"model": "m", "messages": [3]}, WrongType, "messages[0]"),
        ({"model": "m", "messages": [{"content": "x"}]}, MissingField, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user"}]}, MissingField, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         WrongType, "content[0].text"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 3},
         InvalidRequest, "top_p"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]},
         WrongType, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}],
          "response_format": {"type": "json_schema"}}, InvalidRequest, "schema"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": True},
         WrongType, "integer"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1e20},
         WrongType, "100000000000000000000, which is too large"),
    ],
)
def test_chat_validation_messages(body: dict, exc: type[KeelError], needle: str) -> None:
    with pytest.raises(exc) as info:
        validate_chat(body)
    assert needle in info.value.message
    assert 400 <= info.value.http_status < 500


def test_valid_bodies_pass() -> None:
    validate_chat({"model": "m", "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ], "temperature": 0, "max_tokens": 5, "stop": ["\n"], "unknown_field": 1})
    validate_completion({"model": "m", "prompt": ["a", "b"]})
    # token ids would slip past the firewall, which screens text: refused, and said why
    with pytest.raises(WrongType, match="keel screens the prompt's text"):
        validate_completion({"model": "m", "prompt": [651, 7217, 563]})
    assert validate_embeddings({"model": "m", "input": "x"}) == ["x"]
    assert validate_embeddings({"model": "m", "input": [[1, 2]]}) is None
    with pytest.raises(WrongType):
        validate_embeddings({"model": "m", "input": []})


def test_last_user_text() -> None:
    body = {"messages": [{"role": "user", "content": "first"},
                         {"role": "assistant", "content": "a"},
                         {"role": "user", "content": [{"type": "text", "text": "second"}]}]}
    assert last_user_text(body) == "second"
