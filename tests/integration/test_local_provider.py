"""The local provider against real llama.cpp and the real Gemma 3 270M model.

The model is assembled once into ``$KEEL_TEST_MODEL_DIR`` (default ``<repo>/.keel/models``).
Generations are kept to a few tokens so the suite stays fast on two cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from keel.config import LocalModelSettings, ModelSpec, Settings
from keel.errors import ContextLengthExceeded, InvalidRequest, ModelFileError
from keel.providers import model_files
from keel.providers.llama_requests import chat_prompt, gemma_chat_prompt, llama_request
from keel.providers.local import LocalProvider
from keel.providers.model_files import ensure_default_model, resolve_model_path

REPO = Path(__file__).resolve().parents[2]
CONTEXT = 1024
module_loop = pytest.mark.asyncio(loop_scope="module")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@pytest.fixture(scope="session")
def model_path() -> Path:
    model_dir = Path(os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models")))
    return ensure_default_model(model_dir, progress=False)


@pytest.fixture(scope="module")
def spec(model_path: Path) -> ModelSpec:
    return ModelSpec(name="gemma-test", provider="local", path=str(model_path), context=CONTEXT)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def provider(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalProvider]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("keel"), local=LocalModelSettings(idle_unload_s=600)
    )
    p = LocalProvider(settings)
    yield p
    await p.aclose()


# -- model files ---------------------------------------------------------------------------


@pytest.mark.model
def test_ensure_default_model_is_idempotent(model_path: Path) -> None:
    sidecar = model_path.with_name(model_path.name + ".verified.json")
    assert sidecar.is_file()
    before = model_path.stat().st_mtime_ns
    assert ensure_default_model(model_path.parent, progress=False) == model_path
    assert model_path.stat().st_mtime_ns == before  # verified from the sidecar, not rebuilt


@pytest.mark.model
def test_checksum_mismatch_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = model_files._package()
    monkeypatch.setattr(pkg, "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(ModelFileError, match="reinstall"):
        ensure_default_model(tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half file, no temp file


def test_explicit_path_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    spec = ModelSpec(name="m", provider="local", path=str(missing))
    with pytest.raises(ModelFileError, match=str(missing)):
        resolve_model_path(spec, Settings(data_dir=tmp_path))


# -- prompt building (no model) ------------------------------------------------------------


def test_gemma_prompt_folds_system_and_flattens_parts() -> None:
    prompt = gemma_chat_prompt(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "x<end_of_turn>y"},
        ]
    )
    assert prompt == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nx<\u200bend_of_turn>y<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_transcript_prompt_for_base_models() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Capital of France?"},
    ]
    prompt, stop = chat_prompt(messages, "transcript")
    assert prompt == (
        "Question: Be brief.\n\nHi\nAnswer: Hello.\nQuestion: Capital of France?\nAnswer:"
    )
    assert stop == ("\nQuestion:", "\nAnswer:")
    # a final assistant message is continued, not closed
    open_answer, _ = chat_prompt([*messages[:2], {"role": "assistant", "content": "Hel"}],
                                 "transcript")
    assert open_answer.endswith("Answer: Hel")
    assert chat_prompt(messages, "gemma")[1] == "<end_of_turn>"


def test_request_options_map_to_llama_cpp() -> None:
    req = llama_request(
        {
            "max_tokens": 5,
            "temperature": 0,
            "stop": "END",
            "seed": 3,
            "response_format": {"type": "json_object"},
        },
        "p",
        stream=False,
        default_max=256,
        turn_stop="<end_of_turn>",
    )
    assert req["max_tokens"] == 5 and req["temperature"] == 0 and req["seed"] == 3
    assert req["stop"] == ["END", "<end_of_turn>"]
    # compact JSON: llguidance's free whitespace let the small model loop on "\n \n"
    assert req["json_schema"] == {"type": "object", "x-guidance": {"whitespace_flexible": False}}
    with pytest.raises(InvalidRequest):
        llama_request({"n": 2}, "p", stream=False, default_max=1, turn_stop=None)
    with pytest.raises(InvalidRequest):
        gemma_chat_prompt([{"role": "user", "content": [{"type": "image_url"}]}])


@pytest.mark.parametrize("schema", [{"$ref": "#/$defs/nope"}, {"type": "frobnicate"},
                                    {"type": "string", "pattern": "(unclosed"}])
def test_a_schema_llama_cpp_cannot_compile_is_a_400_not_free_text(
        schema: dict[str, Any]) -> None:
    """llama.cpp runs a request whose schema llguidance cannot compile unconstrained."""
    body = {"max_tokens": 5, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    with pytest.raises(InvalidRequest, match="cannot be compiled") as refused:
        llama_request(body, "p", stream=False, default_max=5, turn_stop=None)
    assert refused.value.param == "response_format"


# -- real model ----------------------------------------------------------------------------

HELLO = {"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0}


@pytest.mark.model
@module_loop
async def test_chat(provider: LocalProvider, spec: ModelSpec) -> None:
    res = await provider.chat({**HELLO, "max_tokens": 8}, spec)
    assert provider.loaded
    assert res["id"].startswith("chatcmpl-") and res["object"] == "chat.completion"
    assert res["model"] == "gemma-test"
    choice = res["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in {"stop", "length"}
    usage = res["usage"]
    assert usage["prompt_tokens"] > 5 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.model
@module_loop
async def test_chat_stream_is_incremental(provider: LocalProvider, spec: ModelSpec) -> None:
    arrivals: list[tuple[float, dict[str, Any]]] = []
    body = {
        "messages": [{"role": "user", "content": "Count from one to ten."}],
        "max_tokens": 12,
        "temperature": 0,
    }
    async for chunk in provider.chat_stream(body, spec):
        arrivals.append((time.perf_counter(), chunk))
    chunks = [c for _, c in arrivals]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = [c for c in chunks if c["choices"][0]["delta"].get("content")]
    assert len(content) >= 3
    # tokens arrive one by one as they are generated, not all at the end
    assert arrivals[-1][0] - arrivals[0][0] > 0.01
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in {"stop", "length"}
    assert all("usage" not in c for c in chunks[:-1])
    usage = last["usage"]
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.model
@module_loop
async def test_json_schema_output(provider: LocalProvider, spec: ModelSpec) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    body = {
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "max_tokens": 48,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    }
    res = await provider.chat(body, spec)
    data = orjson.loads(res["choices"][0]["message"]["content"])
    assert set(data) == {"name", "age"}
    assert isinstance(data["name"], str) and len(data["name"]) <= 20
    assert isinstance(data["age"], int) and 0 <= data["age"] <= 150


TEXT = {"type": "string"}
SUMMARY = {
    "type": "object", "additionalProperties": False,
    "required": ["headline", "abstract", "tags", "tone"],
    "properties": {"headline": {**TEXT, "maxLength": 80}, "abstract": {**TEXT, "maxLength": 300},
                   "tone": {"enum": ["positive", "neutral", "negative"]},
                   "tags": {"type": "array", "minItems": 2, "maxItems": 4,
                            "items": {**TEXT, "maxLength": 30}}},
}
DOCS = [
    "NASA Science. NASA Science explores the universe: planets, the sun, the earth and "
    "astrophysics missions.",
    "Veterans Pension. Survivors Pension is a benefit paid to a surviving spouse or child of "
    "a wartime veteran.",
    "Civil Hearing. A civil hearing is scheduled by the court clerk; bring your documents and "
    "arrive early.",
    "Marriage license application. Both applicants must appear in person with identification "
    "and pay the fee.",
]


@pytest.mark.model
@module_loop
async def test_structured_summaries_end_as_complete_json(provider: LocalProvider,
                                                          spec: ModelSpec) -> None:
    """With whitespace allowed between JSON tokens, the 270M model wrote the last value and
    then "\n \n \n..." until max_tokens cut the JSON (the 2nd and 4th documents, here)."""
    import jsonschema

    for doc in DOCS:
        res = await provider.chat({
            "messages": [{"role": "system", "content": "Summarise the document as JSON."},
                         {"role": "user", "content": doc}],
            "max_tokens": 200, "temperature": 0,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "s", "schema": SUMMARY}}}, spec)
        choice = res["choices"][0]
        assert choice["finish_reason"] == "stop", choice
        jsonschema.validate(orjson.loads(choice["message"]["content"]), SUMMARY)


@pytest.mark.model
@module_loop
async def test_completion_and_seed(provider: LocalProvider, spec: ModelSpec) -> None:
    body = {"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0.9, "seed": 7}
    a = await provider.complete(body, spec)
    b = await provider.complete(body, spec)
    assert a["object"] == "text_completion" and a["id"].startswith("cmpl-")
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["completion_tokens"] <= 6
    chunks = [c async for c in provider.complete_stream({**body, "max_tokens": 4}, spec)]
    assert chunks[-1]["choices"][0]["finish_reason"] and chunks[-1]["usage"]["completion_tokens"]


@pytest.mark.model
@module_loop
async def test_context_exceeded(provider: LocalProvider, spec: ModelSpec) -> None:
    long = {"messages": [{"role": "user", "content": "word " * (CONTEXT + 200)}], "max_tokens": 4}
    with pytest.raises(ContextLengthExceeded) as err:
        await provider.chat(long, spec)
    assert err.value.http_status == 400 and err.value.code == "context_length_exceeded"
    assert str(CONTEXT) in err.value.message
    with pytest.raises(ContextLengthExceeded):
        async for _ in provider.chat_stream(long, spec):
            pytest.fail("no chunk may be sent before the error")


@pytest.mark.model
@module_loop
async def test_closing_stream_stops_generation(provider: LocalProvider, spec: ModelSpec) -> None:
    body = {"prompt": "1, 2, 3, 4,", "max_tokens": 400, "temperature": 0}
    stream = provider.complete_stream(body, spec)
    async for _ in stream:
        break
    await stream.aclose()
    # 400 tokens take well over 10 s here; a cancelled generation ends at the next token
    deadline = time.monotonic() + 5
    while provider.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert provider.in_flight == 0


@pytest.mark.model
async def test_idle_unload_frees_memory(tmp_path: Path, spec: ModelSpec) -> None:
    p = LocalProvider(Settings(data_dir=tmp_path, local=LocalModelSettings(idle_unload_s=1)))
    try:
        await p.chat({**HELLO, "max_tokens": 2}, spec)
        assert p.loaded
        loaded_rss = _rss_mb()
        deadline = time.monotonic() + 10
        while p.loaded and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not p.loaded
        assert loaded_rss - _rss_mb() > 150  # the 253 MB of weights (+ KV) are gone
        await p.chat({**HELLO, "max_tokens": 2}, spec)  # loads again on demand
        assert p.loaded
    finally:
        await p.aclose()
    assert not p.loaded
