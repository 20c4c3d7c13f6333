"""``/mcp``: keel's tools as one MCP server (streamable HTTP, ``mcp`` 2.x lowlevel Server).

The ASGI wrapper authenticates the API key before the MCP transport sees the request and
puts the principal in the ASGI scope; ``tools/call`` runs :meth:`ToolGateway.call`. A denial
is a JSON-RPC error (code -32003) whose ``data`` carries the policy ids and decision id, never
the tool result. Malformed JSON-RPC is answered by the transport with JSON-RPC errors.

Fast path: the SDK's stateless transport builds a transport, memory streams and a server
task for every POST (several ms). keel is stateless and JSON-only, so a well-formed
``tools/call``, ``tools/list`` or ``ping`` request is answered here directly, with the same
handlers and the same wire format (the SDK's own result shaping, HTTP status table and
2026-07-28 envelope checks; compared byte for byte with the SDK's answer in the tests), for
the handshake-era versions and for the 2026-07-28 per-request envelope that the SDK's own
client sends by default. Everything else (``initialize``, notifications, batches,
``Mcp-Param-*`` headers, unknown versions, malformed input) goes to the SDK unchanged, so
its validation and error answers still apply.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import mcp_types as types
import orjson
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.runner import ServerRunner
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import DEFAULT_NEGOTIATED_VERSION
from mcp_types import methods as spec
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_MODERN_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from keel import __version__
from keel.errors import KeelError, PermissionDenied, ToolFailed
from keel.gateway.context import ANONYMOUS, Principal
from keel.gateway.http import bearer_token
from keel.gateway.services import Services
from keel.tools.gateway import ToolGateway

SCOPE_KEY = "keel.principal"
SESSION_HEADER = "x-keel-session"
# JSON-RPC error codes for keel's own refusals (server-defined range -32000..-32099)
DENIED = -32003
TOOL_FAILED = -32004
BAD_CALL = -32602  # invalid params (unknown tool, oversized arguments)
INTERNAL = -32603
FAST_METHODS = frozenset({"tools/call", "tools/list", "ping"})
JSON_HEADERS = [(b"content-type", b"application/json")]


def mcp_error(exc: KeelError) -> MCPError:
    data: dict[str, Any] = {"code": exc.code, "type": exc.type, **exc.extra}
    if isinstance(exc, PermissionDenied):
        return MCPError(DENIED, exc.message, data)
    if isinstance(exc, ToolFailed):
        return MCPError(TOOL_FAILED, exc.message, data)
    return MCPError(BAD_CALL if exc.http_status < 500 else TOOL_FAILED, exc.message, data)


class McpEndpoint:
    def __init__(self, svc: Services, gateway: ToolGateway) -> None:
        self.svc = svc
        self.gateway = gateway
        self.server: Server[Any] = Server("keel", version=__version__,
                                          on_list_tools=self._list_tools,
                                          on_call_tool=self._call_tool,
                                          get_tool_input_schema=self._input_schema)
        self.manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True, json_response=True,
            max_request_body_size=svc.settings.server.max_body_bytes)
        self._asgi = StreamableHTTPASGIApp(self.manager)
        # The SDK's result shaping (per-version sieve, 2026-07-28 resultType and serverInfo
        # stamp, cache hints); it reads only the server, not the connection.
        self._shape = ServerRunner(self.server, Connection.from_envelope(
            LATEST_MODERN_VERSION, None, None), None)._serialize
        self.max_body = svc.settings.server.max_body_bytes
        self.fast = True  # False: every request through the SDK (tests compare the two)
        gateway.on_start.append(self._start)

    async def _start(self, stack: AsyncExitStack) -> None:
        await stack.enter_async_context(self.manager.run())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._asgi(scope, receive, send)
            return
        if scope["method"] != "POST":
            # Stateless and JSON-only: keel never pushes server-initiated messages, so it
            # offers no GET stream (the streamable-HTTP spec lets a server answer 405) rather
            # than an SSE stream that would stay open and silent forever.
            body = orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32000, "message": "keel's MCP endpoint takes POST only (stateless, "
                                           "JSON responses; no server-initiated stream)"}})
            await send({"type": "http.response.start", "status": 405,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"allow", b"POST")]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            principal = await self._authenticate(Request(scope))
        except KeelError as exc:
            body = orjson.dumps({"jsonrpc": "2.0", "id": None,
                                 "error": {"code": -32001, "message": exc.message,
                                           "data": {"code": exc.code}}})
            await send({"type": "http.response.start", "status": exc.http_status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        scope[SCOPE_KEY] = principal
        if self.fast and _fast_eligible(scope):
            messages, complete = await _read_body(receive, self.max_body)
            if complete and await self._answer(scope, b"".join(
                    m.get("body", b"") for m in messages), send, principal):
                return
            receive = _replay(messages, receive)
        await self._asgi(scope, receive, send)

    async def _answer(self, scope: Scope, body: bytes, send: Send, principal: Principal) -> bool:
        """Answer a plain ``tools/call``/``tools/list``/``ping`` request; False leaves the
        (untouched) request to the SDK."""
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if (not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0"
                or msg.get("method") not in FAST_METHODS or not msg.keys() <= _ENVELOPE):
            return False
        rid = msg.get("id")
        params = msg.get("params")
        if (isinstance(rid, bool) or not isinstance(rid, int | str)
                or not isinstance(params, dict | None)):
            return False
        method = msg["method"]
        version = _header(scope, b"mcp-protocol-version") or DEFAULT_NEGOTIATED_VERSION
        if version in MODERN_PROTOCOL_VERSIONS and not _modern_envelope_ok(scope, msg):
            return False
        try:
            spec.validate_client_request(method, version, params or {})
            if method == "tools/call":
                call = types.CallToolRequestParams.model_validate(params or {}, by_name=False)
                session = _header(scope, SESSION_HEADER.encode())
                try:
                    _, _, result = await self.gateway.call(
                        principal, call.name, call.arguments or {}, session)
                except KeelError as exc:
                    raise mcp_error(exc) from None
                out: dict[str, Any] = result.model_dump(by_alias=True, mode="json",
                                                        exclude_none=True)
            elif method == "tools/list":
                listed = await self._list_tools(None, None)
                out = listed.model_dump(by_alias=True, mode="json", exclude_none=True)
            else:
                out = {}
        except (ValidationError, KeyError):
            return False  # invalid params, or a method this version lacks: the SDK words it
        except MCPError as exc:
            await _send_error(send, rid, exc, version)
            return True
        try:
            out = self._shape(method, version, out)  # the SDK's per-version wire shape
        except MCPError as exc:  # an invalid result (the SDK logged it); never run it twice
            await _send_error(send, rid, exc, version)
            return True
        await _send_json(send, {"jsonrpc": "2.0", "id": rid, "result": out})
        return True

    async def _authenticate(self, request: Request) -> Principal:
        if not self.svc.settings.auth_required:
            return ANONYMOUS
        return await self.svc.keys.resolve(bearer_token(request))

    # -- MCP handlers ---------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any] | None,
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=s.name, description=s.description or None,
                       input_schema=s.input_schema)
            for s, _ in self.gateway.tools.values()
        ])

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        """For the SDK's ``Mcp-Param-*`` header checks (2026-07-28 requests); without it
        the SDK ran the whole ``tools/list`` handler on every ``tools/call``."""
        entry = self.gateway.tools.get(name)
        return entry[0].input_schema if entry is not None else None

    async def _call_tool(self, ctx: ServerRequestContext[Any, Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        request = ctx.request
        scope = getattr(request, "scope", None) or {}
        principal = scope.get(SCOPE_KEY)
        if not isinstance(principal, Principal):  # only reachable through our wrapper
            raise MCPError(-32001, "not authenticated")
        session = request.headers.get(SESSION_HEADER, "") if request is not None else ""
        try:
            _, _, result = await self.gateway.call(principal, params.name,
                                                   params.arguments or {}, session)
        except KeelError as exc:
            raise mcp_error(exc) from None
        return result


_ENVELOPE = frozenset({"jsonrpc", "id", "method", "params"})


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


def _fast_eligible(scope: Scope) -> bool:
    """Headers the SDK would accept for a JSON answer on the stateless handshake-era path."""
    accept = [t.split(";")[0].strip().lower() for t in _header(scope, b"accept").split(",")]
    if not any(t in ("application/json", "application/*", "*/*") for t in accept):
        return False
    if _header(scope, b"content-type").split(";")[0].strip().lower() != "application/json":
        return False
    version = _header(scope, b"mcp-protocol-version")
    return (not version or version in HANDSHAKE_PROTOCOL_VERSIONS
            or version in MODERN_PROTOCOL_VERSIONS)


def _modern_envelope_ok(scope: Scope, msg: dict[str, Any]) -> bool:
    """A 2026-07-28 request the SDK would dispatch: routing headers given once and matching
    the body, a valid ``_meta`` envelope, and no ``Mcp-Param-*`` headers (their checks
    against the tool's schema stay the SDK's)."""
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    prefix = MCP_PARAM_HEADER_PREFIX.lower()
    if find_duplicated_routing_header(raw) is not None or any(
            k.startswith(prefix) for k, _ in raw):
        return False
    return not isinstance(classify_inbound_request(msg, headers=dict(raw)),
                          InboundLadderRejection)


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], bool]:
    """The request's messages, and whether the body is complete and within ``limit`` (if
    not, the messages read so far are replayed to the SDK, which enforces the limit)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, False
        size += len(message.get("body", b""))
        if size > limit:
            return messages, False
        if not message.get("more_body", False):
            return messages, True


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_error(send: Send, rid: int | str, exc: MCPError, version: str) -> None:
    """A JSON-RPC error; 2026-07-28 answers carry the SDK's HTTP status for its code."""
    status = (ERROR_CODE_HTTP_STATUS.get(exc.error.code, 200)
              if version in MODERN_PROTOCOL_VERSIONS else 200)
    await _send_json(send, {"jsonrpc": "2.0", "id": rid, "error": exc.error.model_dump(
        by_alias=True, mode="json", exclude_none=True)}, status)


async def _send_json(send: Send, payload: dict[str, Any], status: int = 200) -> None:
    try:
        body = orjson.dumps(payload)
    except TypeError:
        body = orjson.dumps({"jsonrpc": "2.0", "id": payload.get("id"), "error": {
            "code": INTERNAL, "message": "tool result is not JSON-serialisable"}})
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})
