"""Validate a batch input file before anything is stored or queued.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``; every line of one file
calls the same endpoint. A bad line is a 4xx naming its line number and what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from keel.batch.schemas import response_schema
from keel.errors import InvalidRequest, KeelError, MalformedJSON, MissingField, PayloadTooLarge
from keel.gateway.validation import check_depth, validate_chat, validate_completion
from keel.providers.grammar_check import check_compiles
from keel.providers.registry import ModelRegistry

JSON = dict[str, Any]
ENDPOINTS = {"/v1/chat/completions": validate_chat, "/v1/completions": validate_completion}
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class ParsedFile:
    endpoint: str
    lines: list[tuple[int, str, str]]  # (line number, custom_id, body as JSON text)


def _at(n: int, exc: KeelError) -> KeelError:
    """The same error class (status, code) with the line number in front."""
    err = type(exc)(f"line {n}: {exc.message}", param=exc.param)
    return err


def _line(n: int, raw: bytes) -> tuple[str, str, JSON]:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"line {n} is not valid JSON ({exc}); each line of a batch file "
                            "is one JSON object") from None
    if not isinstance(obj, dict):
        raise InvalidRequest(f"line {n} must be a JSON object with custom_id, method, url "
                             "and body")
    check_depth(obj, where=f"line {n}")
    for field in ("custom_id", "method", "url", "body"):
        if obj.get(field) is None:
            raise MissingField(f"line {n}: missing required field {field!r}; a line has "
                               "custom_id, method, url and body", param=field)
    cid, method, url, body = (obj[k] for k in ("custom_id", "method", "url", "body"))
    if not isinstance(cid, str) or not cid.strip():
        raise InvalidRequest(f"line {n}: custom_id must be a non-blank string",
                             param="custom_id")
    if len(cid) > MAX_CUSTOM_ID:
        raise InvalidRequest(f"line {n}: custom_id is longer than {MAX_CUSTOM_ID} characters",
                             param="custom_id")
    if method != "POST":
        raise InvalidRequest(f"line {n}: method must be \"POST\" (got {method!r})",
                             param="method")
    if url not in ENDPOINTS:
        raise InvalidRequest(f"line {n}: url {url!r} is not supported in batches; use "
                             f"{' or '.join(ENDPOINTS)}", param="url")
    if not isinstance(body, dict):
        raise InvalidRequest(f"line {n}: body must be a JSON object (the request body)",
                             param="body")
    extra = sorted(set(obj) - {"custom_id", "method", "url", "body"})
    if extra:
        raise InvalidRequest(f"line {n}: unknown field {extra[0]!r}; a line has custom_id, "
                             "method, url and body")
    return cid, url, body


def _body(n: int, url: str, body: JSON, models: ModelRegistry, compiled: set[str]) -> None:
    try:
        ENDPOINTS[url](body)
        if body.get("stream"):
            raise InvalidRequest("`stream` cannot be true in a batch line", param="stream")
        spec = models.get(body["model"])
        if spec.provider == "local":  # what the local provider refuses, refused now
            from keel.providers.llama_requests import (
                chat_prompt,
                completion_prompt,
                llama_request,
            )

            if url == "/v1/chat/completions":
                chat_prompt(body["messages"], spec.chat_format)
            else:
                completion_prompt(body)
            llama_request(body, "", stream=True, default_max=1, turn_stop=None)
    except KeelError as exc:
        raise _at(n, exc) from None
    schema = response_schema(body)
    if schema is not None:
        key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
        if key not in compiled:  # one compile per distinct schema (~1-10 ms each)
            check_compiles(schema, f"line {n}")
            compiled.add(key)


def parse(content: bytes, models: ModelRegistry, *, max_bytes: int, max_lines: int
          ) -> ParsedFile:
    if len(content) > max_bytes:
        raise PayloadTooLarge(f"the file is {len(content)} bytes; the limit is {max_bytes} "
                              "bytes (set by batch.max_file_bytes): split it into several "
                              "batches")
    if content.startswith(b"\xef\xbb\xbf"):
        content = content[3:]
    out: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    endpoint = ""
    compiled: set[str] = set()
    for n, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_lines:
            raise InvalidRequest(f"the file has more than {max_lines} lines "
                                 "(batch.max_lines): split it into several batches")
        cid, url, body = _line(n, raw)
        if cid in seen:
            raise InvalidRequest(f"line {n} repeats custom_id {cid!r} of line {seen[cid]}; "
                                 "each custom_id must be unique in a batch",
                                 param="custom_id")
        seen[cid] = n
        if endpoint and url != endpoint:
            raise InvalidRequest(f"line {n} calls {url} but earlier lines call {endpoint}; "
                                 "one batch calls one endpoint", param="url")
        endpoint = url
        _body(n, url, body, models, compiled)
        out.append((n, cid, orjson.dumps(body).decode()))
    if not out:
        raise InvalidRequest("the file has no request lines; each line is one JSON object "
                             "with custom_id, method, url and body")
    return ParsedFile(endpoint, out)
