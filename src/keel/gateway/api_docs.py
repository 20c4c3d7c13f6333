"""The API's documentation: ``/openapi.json`` that describes every body, query parameter and
status code keel really answers with, and ``/docs`` (Swagger UI) served from local files.

keel's endpoints parse their own bodies (fast, and with messages that say what to fix), so
FastAPI cannot infer their shapes: they are described here, in one table, and merged into
the generated document. Swagger UI's assets come from the ``fastapi-offline`` package, so
``/docs`` works on a machine with no internet access.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from keel.approvals.models import MAX_AMOUNT, MAX_TIMEOUT_S, STATUSES
from keel.gateway.params import MAX_HOURS

JSON = dict[str, Any]
ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA: JSON = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["type", "code", "message"],
        "properties": {"type": {"type": "string"}, "code": {"type": "string"},
                       "message": {"type": "string"},
                       "param": {"type": ["string", "null"]}},
    }},
}
_ERRORS = {400: "Invalid request: the message says what to fix",
           401: "Missing or invalid API key", 403: "Not allowed for this key (or policy)",
           404: "No such resource", 405: "Method not allowed (see the Allow header)",
           409: "Conflict: already decided or in use", 410: "Expired",
           413: "Body over server.max_body_bytes", 415: "Unsupported media type",
           429: "Rate limited", 502: "Upstream (model, tool, payee) failed",
           503: "A model file or backend is unavailable", 504: "Upstream timed out"}
_COMMON = (400, 401, 403, 404, 405, 413, 429)
_UPSTREAM = (502, 503, 504)

_STR = {"type": "string"}
_OBJ = {"type": "object"}


def _int(lo: int, hi: int) -> JSON:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _num(lo: float, hi: float) -> JSON:
    return {"type": "number", "minimum": lo, "maximum": hi}


_SAMPLING: JSON = {
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "max_tokens": _int(1, 1 << 20), "max_completion_tokens": _int(1, 1 << 20),
    "temperature": _num(0, 2), "top_p": _num(0, 1), "n": _int(1, 16),
    "stop": {"anyOf": [_STR, {"type": "array", "items": _STR, "maxItems": 4}]},
    "seed": {"type": "integer"}, "user": _STR,
    "response_format": {"type": "object", "required": ["type"], "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object", "required": ["schema"],
                        "properties": {"name": _STR, "schema": _OBJ}}}},
}
_MESSAGE: JSON = {
    "type": "object", "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [_STR, {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": _STR}}}]},
        "name": _STR,
    },
}


def _body(props: JSON, required: list[str], *, extra: bool = True) -> JSON:
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": extra}


# (method, path) -> request body schema
BODIES: dict[tuple[str, str], JSON] = {
    ("post", "/v1/chat/completions"): _body(
        {"model": _STR, "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
         **_SAMPLING}, ["model", "messages"]),
    ("post", "/v1/completions"): _body(
        {"model": _STR, "prompt": {"anyOf": [_STR, {"type": "array", "minItems": 1,
                                                   "items": _STR}]}, **_SAMPLING},
        ["model", "prompt"]),
    ("post", "/v1/embeddings"): _body(
        {"model": _STR,
         "input": {"anyOf": [_STR, {"type": "array", "minItems": 1, "maxItems": 2048,
                                    "items": _STR}]},
         "encoding_format": {"enum": ["float", "base64"]}, "dimensions": _int(1, 1 << 16),
         "user": _STR}, ["model", "input"]),
    ("post", "/v1/admin/keys"): _body(
        {"tenant": {"type": "string", "pattern": r"\S"}, "agent": _STR, "admin": {
            "type": "boolean"}, "name": _STR}, ["tenant"]),
    ("post", "/v1/admin/cache/flush"): _body({"namespace": _STR, "tenant": _STR},
                                             ["namespace"]),
    ("post", "/v1/tools/{name}"): _body({"arguments": _OBJ}, [], extra=False),
    ("post", "/v1/approvals"): _body(
        {"action": {"type": "string", "minLength": 1, "maxLength": 200},
         "arguments": _OBJ, "amount": _num(0, MAX_AMOUNT), "risk_level": _STR,
         "reason": {"type": "string", "maxLength": 4000},
         "requested_by": {"type": "string", "maxLength": 200}, "tenant": _STR,
         "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
         "idempotency_key": {"type": "string", "maxLength": 200}},
        ["action"], extra=False),
    ("post", "/v1/approvals/{approval_id}/decision"): _body(
        {"decision": {"enum": ["approve", "deny"]}, "note": _STR}, ["decision"]),
    ("post", "/v1/fetch"): _body(
        {"url": {"type": "string", "format": "uri"}, "session_id": _STR,
         "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]},
         "headers": {"type": "object", "additionalProperties": _STR},
         "body": {"anyOf": [_STR, _OBJ, {"type": "array"}]}}, ["url", "session_id"]),
    ("post", "/v1/admin/payments/{payment_id}/refund"): _body({"memo": _STR}, []),
}


def _q(name: str, schema: JSON, description: str = "") -> JSON:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_HOURS = _q("hours", _num(0, MAX_HOURS), "only the last N hours")
# (method, path) -> query parameters
QUERIES: dict[tuple[str, str], list[JSON]] = {
    ("get", "/v1/admin/keys"): [_q("tenant", _STR)],
    ("get", "/v1/admin/requests"): [
        _q("tenant", _STR), _q("model", _STR), _q("status", {"enum": ["ok", "error"]}),
        _q("since", _num(0, 1e11), "unix time"), _q("limit", _int(1, 1000)),
        _q("offset", _int(0, 10**9))],
    ("get", "/v1/admin/cache/stats"): [_HOURS, _q("tenant", _STR)],
    ("get", "/v1/admin/tool-decisions"): [
        _q("tenant", _STR), _q("decision", {"enum": ["allow", "deny", "approval"]}),
        _HOURS, _q("limit", _int(1, 1000))],
    ("get", "/v1/approvals"): [_q("status", {"enum": list(STATUSES)}), _q("action", _STR),
                               _q("tenant", _STR), _q("limit", _int(1, 1000))],
    ("get", "/v1/approvals/{approval_id}"): [
        _q("wait", _num(0, 60), "long-poll up to S seconds ([approvals] max_wait_s)")],
}
# (method, path) -> success statuses other than 200, and extra error statuses
SUCCESS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/admin/keys"): (201,), ("post", "/v1/approvals"): (201,),
    ("post", "/v1/fetch"): (200, 202),
}
EXTRA_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/chat/completions"): _UPSTREAM, ("post", "/v1/completions"): _UPSTREAM,
    ("post", "/v1/embeddings"): _UPSTREAM, ("post", "/v1/tools/{name}"): (409, *_UPSTREAM),
    ("post", "/v1/approvals/{approval_id}/decision"): (409, 410),
    ("post", "/v1/approvals"): (409,),
    ("post", "/v1/fetch"): (409, *_UPSTREAM),
    ("post", "/v1/admin/payments/{payment_id}/refund"): (409, *_UPSTREAM),
}
_STREAMING = {("post", "/v1/chat/completions"), ("post", "/v1/completions")}
_TEXT = {("get", "/metrics")}


def describe(spec: JSON) -> JSON:
    """Merge keel's bodies, parameters and status codes into FastAPI's document."""
    components = spec.setdefault("components", {})
    schemas = {k: v for k, v in components.get("schemas", {}).items()
               if k not in ("HTTPValidationError", "ValidationError")}  # keel answers 400
    components["schemas"] = {**schemas, "Error": ERROR_SCHEMA}
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "an API key from `keel keys create`"}}
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            key = (method, path)
            if key in BODIES:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": BODIES[key]}}}
            params = [p for p in op.get("parameters", []) if p.get("in") == "path"]
            for p in params:
                p["schema"] = {"type": "string", "minLength": 1}
            op["parameters"] = params + QUERIES.get(key, [])
            if not op["parameters"]:
                op.pop("parameters")
            if path not in ("/healthz",):
                op["security"] = [{"bearer": []}]
            op["responses"] = _responses(key)
    return spec


def _responses(key: tuple[str, str]) -> JSON:
    out: JSON = {}
    for code in SUCCESS.get(key, (200,)):
        if key in _TEXT:
            content: JSON = {"text/plain": {"schema": _STR}}
        elif key in _STREAMING:
            content = {"application/json": {"schema": _OBJ},
                       "text/event-stream": {"schema": _STR}}
        else:
            content = {"application/json": {"schema": _OBJ}}
        out[str(code)] = {"description": "OK" if code < 300 else "Accepted",
                          "content": content}
    for code in sorted({*_COMMON, *EXTRA_ERRORS.get(key, ())}):
        out[str(code)] = {"description": _ERRORS[code],
                          "content": {"application/json": {"schema": ERROR_REF}}}
        if code == 405:
            out[str(code)]["headers"] = {"Allow": {"schema": _STR, "required": True}}
        if code == 401:
            out[str(code)]["headers"] = {"WWW-Authenticate": {"schema": _STR}}
    return out


def install(app: FastAPI) -> None:
    """``/openapi.json`` from :func:`describe`, and ``/docs`` with local Swagger UI assets.
    Call after every router is included (create ``FastAPI(docs_url=None)``)."""

    def openapi() -> JSON:
        if app.openapi_schema is None:
            app.openapi_schema = describe(get_openapi(
                title=app.title, version=app.version, routes=app.routes,
                description="keel: OpenAI-compatible gateway and agent control plane. "
                            "Errors are `{\"error\": {\"type\", \"code\", \"message\"}}`."))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    assets = files("fastapi_offline") / "static"
    app.mount("/docs/static", StaticFiles(directory=str(assets)), name="docs-static")

    async def docs(_request: Request) -> Response:
        page: HTMLResponse = get_swagger_ui_html(
            openapi_url="/openapi.json", title="keel API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png")
        return page

    app.add_route("/docs", docs, methods=["GET"], include_in_schema=False)

