"""Connections to the tools keel fronts: MCP servers (stdio or streamable HTTP), HTTP tools.

Each MCP server gets one long-lived client session opened when the gateway starts; calls
from many requests share it (JSON-RPC ids keep them apart). Plain HTTP tools are called with
one pooled aiohttp session; their JSON answer becomes an MCP ``CallToolResult``, and an x402
``402`` (``PAYMENT-REQUIRED`` header) becomes the x402 MCP transport's payment-required
result, so paid HTTP tools are paid by the same hook as paid MCP tools.
"""

from __future__ import annotations

import base64
import os
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import aiohttp
import httpx2
import mcp_types as types
import orjson
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import X_MCP_HEADER_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from keel.errors import ConfigError, ToolFailed
from keel.redaction import Redactor
from keel.tools.mcp_http import ModernHttpCaller
from keel.tools.settings import HttpToolSettings, McpServerSettings

# the x402 MCP transport's _meta keys; HTTP tools speak x402 headers and are mapped onto them
X402_PAYMENT_META = "x402/payment"
X402_PAYMENT_RESPONSE_META = "x402/payment-response"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    server: str
    description: str
    input_schema: dict[str, Any]
    spend_arg: str | None = None


class Upstream(Protocol):
    name: str

    async def start(self, stack: AsyncExitStack) -> list[ToolSpec]: ...

    async def call(self, tool: str, arguments: dict[str, Any],
                   meta: dict[str, Any] | None = None) -> types.CallToolResult: ...


class McpUpstream:
    """One MCP server, reached over stdio (a child process) or streamable HTTP."""

    def __init__(self, cfg: McpServerSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._client: Client | None = None
        self._direct: ModernHttpCaller | None = None  # 2026-07-28 HTTP servers
        self._direct_tools: frozenset[str] = frozenset()
        self._redact = Redactor(v.get_secret_value() for v in cfg.headers.values())

    def __repr__(self) -> str:  # never show headers (they may carry tokens)
        return f"McpUpstream({self.name!r})"

    async def start(self, stack: AsyncExitStack) -> list[ToolSpec]:
        cfg = self.cfg
        target: Any
        if cfg.url:
            http = httpx2.AsyncClient(
                headers={k: v.get_secret_value() for k, v in cfg.headers.items()},
                timeout=httpx2.Timeout(cfg.timeout_s))
            await stack.enter_async_context(http)
            target = streamable_http_client(cfg.url, http_client=http)
        else:
            cmd = cfg.command[0]
            params = StdioServerParameters(
                command=sys.executable if cmd in ("python", "python3") else cmd,
                args=cfg.command[1:], env=cfg.env or None, cwd=cfg.cwd)
            target = stdio_client(params, errlog=_errlog(stack))
        client = Client(target, read_timeout_seconds=cfg.timeout_s, cache=None)
        try:
            self._client = await stack.enter_async_context(client)
            listed = await self._client.list_tools()
        except Exception as exc:
            raise ConfigError(f"tool server {self.name!r} did not start or answer: "
                              f"{type(exc).__name__}: {exc}") from None
        tools = list(listed.tools)
        cursor = listed.next_cursor
        while cursor:
            page = await self._client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
        if cfg.url and self._client.protocol_version in MODERN_PROTOCOL_VERSIONS:
            session = await stack.enter_async_context(aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                headers={k: v.get_secret_value() for k, v in cfg.headers.items()}))
            self._direct = ModernHttpCaller(self.name, cfg.url, self._client.protocol_version,
                                            session)
            # arguments mapped to Mcp-Param-* headers: the SDK derives those
            self._direct_tools = frozenset(
                t.name for t in tools if X_MCP_HEADER_KEY.encode() not in orjson.dumps(
                    t.input_schema))
        return [ToolSpec(t.name, self.name, t.description or "", dict(t.input_schema),
                         cfg.spend_args.get(t.name)) for t in tools]

    async def call(self, tool: str, arguments: dict[str, Any],
                   meta: dict[str, Any] | None = None) -> types.CallToolResult:
        if self._client is None:
            raise ToolFailed(f"tool server {self.name!r} is not connected")
        try:
            if self._direct is not None and tool in self._direct_tools:
                return await self._direct.call(tool, arguments, meta)
            return await self._client.call_tool(tool, arguments, meta=meta)  # type: ignore[arg-type]
        except MCPError as exc:
            raise ToolFailed(f"tool server {self.name!r} refused {tool!r}: "
                             f"{self._redact(exc.message)}",
                             upstream_code=exc.code) from None
        except (OSError, TimeoutError, httpx2.HTTPError) as exc:
            raise ToolFailed(f"tool server {self.name!r} failed: {type(exc).__name__}") from None


class HttpToolUpstream:
    """A plain HTTP endpoint: the arguments are sent as the JSON body."""

    def __init__(self, cfg: HttpToolSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        # the tool's own credentials never reach the agent, even when the tool echoes them
        self._redact = Redactor(v.get_secret_value() for v in cfg.headers.values())

    def __repr__(self) -> str:
        return f"HttpToolUpstream({self.name!r})"

    async def start(self, stack: AsyncExitStack) -> list[ToolSpec]:
        self._session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            headers={k: v.get_secret_value() for k, v in self.cfg.headers.items()}))
        return [ToolSpec(self.cfg.name, self.cfg.name, self.cfg.description,
                         dict(self.cfg.input_schema), self.cfg.spend_arg)]

    async def call(self, tool: str, arguments: dict[str, Any],
                   meta: dict[str, Any] | None = None) -> types.CallToolResult:
        assert self._session is not None, "HTTP tool used before start()"
        headers = {"content-type": "application/json"}
        payment = (meta or {}).get(X402_PAYMENT_META)
        if payment is not None:  # a paid retry: the signed payload as the x402 header
            headers["PAYMENT-SIGNATURE"] = base64.b64encode(orjson.dumps(payment)).decode()
        try:
            async with self._session.request(self.cfg.method, self.cfg.url,
                                             data=orjson.dumps(arguments),
                                             headers=headers) as resp:
                raw = self._redact.exact(await resp.read())
                status = resp.status
                required = resp.headers.get("payment-required")
                settled = resp.headers.get("payment-response")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ToolFailed(f"HTTP tool {tool!r} failed: {type(exc).__name__}") from None
        if status == 402 and required:
            # x402 over HTTP -> the MCP transport's shape, so one payment hook serves both
            terms = _b64json(required)
            if isinstance(terms, dict):
                return types.CallToolResult(
                    content=[types.TextContent(type="text", text=orjson.dumps(terms).decode())],
                    structured_content=terms, is_error=True)
        text = raw.decode(errors="replace")
        structured: dict[str, Any] | None = None
        try:
            parsed = orjson.loads(raw)
            structured = parsed if isinstance(parsed, dict) else {"result": parsed}
        except orjson.JSONDecodeError:
            pass
        receipt = _b64json(settled) if settled else None
        return types.CallToolResult.model_validate({
            "content": [{"type": "text", "text": text}], "structuredContent": structured,
            "isError": status >= 400,
            "_meta": {X402_PAYMENT_RESPONSE_META: receipt} if receipt is not None else None})


def _b64json(value: str) -> Any:
    """A base64-JSON x402 header, or None when it is not one."""
    try:
        return orjson.loads(base64.b64decode(value.strip(), validate=True))
    except (ValueError, orjson.JSONDecodeError):
        return None


def _errlog(stack: AsyncExitStack) -> TextIO:
    """The server's stderr goes to ours, or to /dev/null when ours is not a real file."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return stack.enter_context(open(os.devnull, "w"))


def build_upstreams(servers: list[McpServerSettings], http: list[HttpToolSettings]
                    ) -> list[Upstream]:
    ups: list[Upstream] = [McpUpstream(s) for s in servers]
    ups.extend(HttpToolUpstream(h) for h in http)
    return ups
