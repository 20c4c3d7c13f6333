"""Batch input validation: every bad file is a 4xx naming the line and what to fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from keel.batch import jsonl
from keel.batch.schemas import output_valid
from keel.config import load_settings
from keel.errors import InvalidRequest, KeelError, MalformedJSON, PayloadTooLarge
from keel.providers.grammar_check import check_compiles, llama_grammar
from keel.providers.registry import ModelRegistry

SCHEMA = {"type": "object", "properties": {"sentiment": {"enum": ["pos", "neg"]}},
          "required": ["sentiment"]}


def line(cid: str = "a", **body: Any) -> bytes:
    b = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "hi"}], **body}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                         "body": b})


@pytest.fixture
def models(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(load_settings(None, data_dir=str(tmp_path)))


def parse(models: ModelRegistry, *lines: bytes, **kw: int) -> jsonl.ParsedFile:
    return jsonl.parse(b"\n".join(lines) + b"\n", models, max_bytes=kw.get("max_bytes", 10**6),
                       max_lines=kw.get("max_lines", 100))


def error(models: ModelRegistry, *lines: bytes, **kw: int) -> KeelError:
    with pytest.raises(KeelError) as exc:
        parse(models, *lines, **kw)
    assert 400 <= exc.value.http_status < 500
    return exc.value


def test_valid_file_keeps_line_numbers_and_skips_blank_lines(models: ModelRegistry) -> None:
    got = parse(models, line("a"), b"", line("b", response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}))
    assert got.endpoint == "/v1/chat/completions"
    assert [(n, c) for n, c, _ in got.lines] == [(1, "a"), (3, "b")]


def test_malformed_json_names_the_line(models: ModelRegistry) -> None:
    e = error(models, line("a"), b'{"custom_id": "b", ')
    assert isinstance(e, MalformedJSON) and "line 2 is not valid JSON" in e.message


def test_duplicate_custom_id(models: ModelRegistry) -> None:
    e = error(models, line("a"), line("b"), line("a"))
    assert "line 3 repeats custom_id 'a' of line 1" in e.message


def test_unsupported_url_and_mixed_urls(models: ModelRegistry) -> None:
    bad = orjson.loads(line("b"))
    bad["url"] = "/v1/embeddings"
    e = error(models, line("a"), orjson.dumps(bad))
    assert "line 2: url '/v1/embeddings' is not supported" in e.message
    mixed = {**orjson.loads(line("c")), "url": "/v1/completions",
             "body": {"model": "gemma-3-270m", "prompt": "x"}}
    e = error(models, line("a"), orjson.dumps(mixed))
    assert "one batch calls one endpoint" in e.message


def test_unknown_model_keeps_its_status(models: ModelRegistry) -> None:
    e = error(models, line("a", model="gpt-9"))
    assert e.http_status == 404 and e.message.startswith("line 1: model 'gpt-9' does not exist")


def test_stream_and_bad_body(models: ModelRegistry) -> None:
    assert "line 1: `stream` cannot be true" in error(models, line("a", stream=True)).message
    assert error(models, line("a", temperature="hot")).message.startswith("line 1:")
    list_body = orjson.dumps({"custom_id": "a", "method": "POST",
                              "url": "/v1/chat/completions", "body": []})
    assert "line 1: body must be a JSON object" in error(models, list_body).message
    get = {**orjson.loads(line("a")), "method": "GET"}
    assert 'method must be "POST"' in error(models, orjson.dumps(get)).message


def test_local_model_refusals_are_caught_at_upload(models: ModelRegistry) -> None:
    e = error(models, line("a", n=3))
    assert e.message.startswith("line 1:") and "`n`" in e.message


@pytest.mark.parametrize("schema, detail", [
    ({"type": "object", "properties": {"a": {"$ref": "#/defs/nope"}}}, "does not exist"),
    ({"type": "frobnicate"}, "frobnicate"),
    ({"type": "string", "pattern": "(("}, "regex parse error: unclosed group in '(('"),
])
def test_schema_llama_cpp_cannot_compile(models: ModelRegistry, schema: dict[str, Any],
                                         detail: str) -> None:
    e = error(models, line("a"), line("b", response_format={
        "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}))
    assert isinstance(e, InvalidRequest) and e.message.startswith("line 2:")
    assert "cannot be compiled" in e.message and detail in e.message


def test_file_too_large_and_too_many_lines(models: ModelRegistry) -> None:
    assert isinstance(error(models, line("a"), max_bytes=10), PayloadTooLarge)
    assert "more than 1 lines" in error(models, line("a"), line("b"), max_lines=1).message
    assert "no request lines" in error(models, b"").message


def test_grammar_text_matches_xllamacpp() -> None:
    """keel compiles the exact grammar llama.cpp gets (xllamacpp's converter)."""
    import xllamacpp

    from keel.providers.llama_requests import constrained

    for schema in (SCHEMA, {"type": "frobnicate"}, {"type": "array", "items": {}}):
        assert llama_grammar(schema) == xllamacpp.json_schema_to_grammar(constrained(schema))
    check_compiles(SCHEMA, "line 1")
    # compact JSON unless the schema sets llguidance's options itself
    assert constrained(SCHEMA)["x-guidance"] == {"whitespace_flexible": False}
    own = {**SCHEMA, "x-guidance": {"whitespace_flexible": True}}
    assert constrained(own) is own


def test_output_validation() -> None:
    assert output_valid(SCHEMA, '{"sentiment": "pos"}')
    assert not output_valid(SCHEMA, '{"sentiment": "meh"}')
    assert not output_valid(SCHEMA, '{"sentiment": "pos"')


def completion(cid: str = "a", **body: Any) -> bytes:
    b = {"model": "gemma-3-270m", "prompt": "The sky is", **body}
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/completions",
                         "body": b})


def test_completion_prompts_the_local_model_refuses_are_caught_at_upload(
        models: ModelRegistry) -> None:
    e = error(models, completion("a"), completion("b", prompt=["The sky is", "Grass is"]))
    assert e.message.startswith("line 2:") and "`prompt` must be one string" in e.message
    parse(models, completion("a", prompt=["one string in a list"]))


@pytest.mark.parametrize("field, value", [("echo", True), ("best_of", 3), ("suffix", "END")])
def test_completion_options_the_local_model_ignores_are_refused(
        models: ModelRegistry, field: str, value: Any) -> None:
    e = error(models, completion("a", **{field: value}))
    assert e.message.startswith("line 1:") and f"`{field}`" in e.message
    assert e.param == field


def test_no_op_completion_options_are_accepted(models: ModelRegistry) -> None:
    parse(models, completion("a", echo=False, best_of=1, suffix=None),
          completion("b", suffix=""))


@pytest.mark.parametrize("field", ["custom_id", "method", "url", "body"])
def test_a_missing_field_is_named(models: ModelRegistry, field: str) -> None:
    obj = orjson.loads(line("a"))
    del obj[field]
    e = error(models, orjson.dumps(obj))
    assert e.message.startswith(f"line 1: missing required field {field!r}")
    assert "None" not in e.message


def test_blank_custom_id_is_refused(models: ModelRegistry) -> None:
    assert "non-blank" in error(models, line(" ")).message
    assert "non-blank" in error(models, line("")).message


def test_too_large_names_the_setting_and_its_value(models: ModelRegistry) -> None:
    e = error(models, line("a"), max_bytes=20)
    assert "the limit is 20 bytes (set by batch.max_file_bytes)" in e.message


def test_completion_options_refused_by_the_local_provider_itself() -> None:
    """The interactive /v1/completions path uses the same function."""
    from keel.providers.llama_requests import completion_prompt

    for field, value in (("echo", True), ("best_of", 2), ("suffix", "END")):
        with pytest.raises(InvalidRequest, match=f"`{field}`"):
            completion_prompt({"prompt": "x", field: value})
    assert completion_prompt({"prompt": "x", "echo": False, "best_of": 1, "suffix": ""}) == "x"
