"""``/mcp``: keel's tools as one MCP server (streamable HTTP, ``mcp`` 2.x lowlevel Server).

The ASGI wrapper authenticates the API key before the MCP transport sees the request and
puts the principal in the ASGI scope; ``tools/call`` runs :meth:`ToolGateway.call`. A denial
is a JSON-RPC error (code -32003) whose ``data`` carries the policy ids and decision id, never
the tool result. Malformed JSON-RPC is answered by the transport with JSON-RPC errors.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

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
                                          on_call_tool=self._call_tool)
        self.manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True, json_response=True,
            max_request_body_size=svc.settings.server.max_body_bytes)
        self._asgi = StreamableHTTPASGIApp(self.manager)
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
        await self._asgi(scope, receive, send)

    async def _authenticate(self, request: Request) -> Principal:
        if not self.svc.settings.auth_required:
            return ANONYMOUS
        return await self.svc.keys.resolve(bearer_token(request))

    # -- MCP handlers ---------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any, Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=s.name, description=s.description or None,
                       input_schema=s.input_schema)
            for s, _ in self.gateway.tools.values()
        ])

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
