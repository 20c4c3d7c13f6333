"""``tools/call`` to a 2026-07-28 MCP server over streamable HTTP, as one aiohttp POST.

From protocol version 2026-07-28 on, a request is self-contained: no handshake, no session
id, one JSON-RPC request in (``params._meta`` carries the protocol version, client info
and capabilities; ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` headers repeat
them) and one JSON-RPC response out, as JSON or as an SSE stream that ends with it. The
SDK's client builds memory streams, a dispatcher task and an httpx request per call, about
half of what keel's ``/mcp`` added over a direct call; this sends the same request and reads
the same answer directly. :class:`~keel.tools.upstreams.McpUpstream` connects with the SDK
(discovery, listing) and uses this for calls only when the server speaks 2026-07-28 and
the tool declares no ``x-mcp-header`` arguments (those headers stay the SDK's to derive).
"""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
import mcp_types as types
import orjson
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    ErrorData,
)
from pydantic import ValidationError

from keel import __version__
from keel.errors import ToolFailed

ACCEPT = "application/json, text/event-stream"


class ModernHttpCaller:
    """Calls tools of one 2026-07-28 server through ``session`` (which carries the
    server's configured headers and timeout)."""

    def __init__(self, server: str, url: str, version: str,
                 session: aiohttp.ClientSession) -> None:
        self.server = server
        self.url = url
        self.version = version
        self._session = session
        self._ids = itertools.count(1)
        self._envelope = {PROTOCOL_VERSION_META_KEY: version,
                          CLIENT_INFO_META_KEY: {"name": "keel", "version": __version__},
                          CLIENT_CAPABILITIES_META_KEY: {}}

    async def call(self, tool: str, arguments: dict[str, Any],
                   meta: dict[str, Any] | None = None) -> types.CallToolResult:
        """The tool's result; a JSON-RPC error raises :class:`MCPError` (as the SDK's
        client does), transport failures :class:`ToolFailed`."""
        rid = next(self._ids)
        body = {"jsonrpc": "2.0", "id": rid, "method": "tools/call",
                "params": {"name": tool, "arguments": arguments,
                           "_meta": {**(meta or {}), **self._envelope}}}
        headers = {"accept": ACCEPT, "content-type": "application/json",
                   "mcp-protocol-version": self.version, "mcp-method": "tools/call",
                   "mcp-name": tool}
        try:
            async with self._session.post(self.url, data=orjson.dumps(body),
                                          headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ToolFailed(f"tool server {self.server!r} failed: {type(exc).__name__}"
                             ) from None
        message = _response(raw, ctype, rid)
        if message is None:
            raise ToolFailed(f"tool server {self.server!r} answered HTTP {status} without a "
                             f"JSON-RPC response to the call")
        if "error" in message:
            try:
                error = ErrorData.model_validate(message["error"])
            except ValidationError:
                raise ToolFailed(f"tool server {self.server!r} sent a malformed error"
                                 ) from None
            raise MCPError.from_error_data(error)
        result = message.get("result")
        if not isinstance(result, dict):
            raise ToolFailed(f"tool server {self.server!r} sent a response without a result")
        kind = result.get("resultType", "complete")
        if kind != "complete":  # e.g. input_required: keel relays no elicitation
            raise ToolFailed(f"tool server {self.server!r} asked for more input "
                             f"({kind!r}); keel's tool gateway does not relay that")
        try:
            return types.CallToolResult.model_validate(result)
        except ValidationError:
            raise ToolFailed(f"tool server {self.server!r} sent a malformed tool result"
                             ) from None


def _response(raw: bytes, ctype: str, rid: int) -> dict[str, Any] | None:
    """The JSON-RPC response to ``rid`` in a JSON body or an SSE stream (notifications
    before it, such as progress, are skipped)."""
    if ctype == "text/event-stream":
        candidates = [_json(data) for data in _sse_data(raw)]
    else:
        candidates = [_json(raw)]
    for msg in candidates:
        if isinstance(msg, dict) and msg.get("id") == rid and ("result" in msg or "error" in msg):
            return msg
    return None


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _sse_data(raw: bytes) -> list[bytes]:
    """The ``data`` of each event (multi-line data joined with newlines)."""
    events: list[bytes] = []
    lines: list[bytes] = []
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if not line:
            if lines:
                events.append(b"\n".join(lines))
                lines = []
        elif line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    if lines:
        events.append(b"\n".join(lines))
    return events
