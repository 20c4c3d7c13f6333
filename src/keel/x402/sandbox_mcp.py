"""The sandbox's paid MCP server: ``/mcp`` on ``keel x402 sandbox`` (streamable HTTP).

Tools are priced with the x402 SDK's MCP payment wrapper (``x402.mcp.server_async``): a call
without ``_meta["x402/payment"]`` answers an error result whose structured content is the
``PaymentRequired``; a call carrying a signed payment is verified and settled through the
sandbox's facilitator (the same in-memory USDC chain as the HTTP endpoints), and the result's
``_meta["x402/payment-response"]`` carries the settlement. Point a tool server at it to try
paid tools behind keel's tool gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from x402 import x402ResourceServer
from x402.mcp.server_async import PaymentWrapperConfig, create_payment_wrapper
from x402.mcp.types import MCPToolContext, MCPToolResult
from x402.schemas.config import ResourceConfig

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class PaidTool:
    name: str
    description: str
    price: str | None  # None: free
    input_schema: dict[str, Any]
    handler: Handler


def default_tools() -> list[PaidTool]:
    symbol = {"type": "object", "properties": {"symbol": {"type": "string"}},
              "required": ["symbol"]}
    word = {"type": "object", "properties": {"word": {"type": "string"}}, "required": ["word"]}
    return [
        PaidTool("market_quote", "A delayed stock quote ($0.02 per call)", "$0.02", symbol,
                 lambda a: {"symbol": str(a.get("symbol", "")).upper(), "price": 123.45}),
        PaidTool("define_word", "A dictionary definition ($0.001 per call)", "$0.001", word,
                 lambda a: {"word": a.get("word"), "definition": "a sandbox definition"}),
        PaidTool("premium_forecast", "A long-range forecast ($5.00 per call)", "$5.00",
                 {"type": "object", "properties": {}}, lambda a: {"forecast": "sunny"}),
        PaidTool("server_time", "The sandbox's clock (free)", None,
                 {"type": "object", "properties": {}}, lambda a: {"time": "12:00"}),
    ]


def _call_result(r: MCPToolResult) -> types.CallToolResult:
    content: list[types.TextContent] = []
    for item in r.content:
        if isinstance(item, dict) and item.get("type") == "text":
            content.append(types.TextContent(type="text", text=str(item.get("text", ""))))
    return types.CallToolResult.model_validate({
        "content": [c.model_dump(by_alias=True) for c in content],
        "structuredContent": r.structured_content, "isError": r.is_error,
        "_meta": r.meta or None})


class SandboxMcp:
    """A lowlevel MCP server whose priced tools go through the x402 payment wrapper."""

    def __init__(self, resource_server: x402ResourceServer, network: str, pay_to: str,
                 tools: list[PaidTool] | None = None) -> None:
        self.tools = {t.name: t for t in (tools if tools is not None else default_tools())}
        self._wrapped: dict[str, Callable[..., Any]] = {}
        for t in self.tools.values():
            if t.price is None:
                continue
            accepts = resource_server.build_payment_requirements(ResourceConfig(
                scheme="exact", pay_to=pay_to, price=t.price, network=network,
                max_timeout_seconds=60))
            paid = create_payment_wrapper(resource_server, PaymentWrapperConfig(accepts=accepts))
            self._wrapped[t.name] = paid(self._handler(t))
        self.server: Server[Any] = Server("keel-x402-sandbox", on_list_tools=self._list,
                                          on_call_tool=self._call)
        self.manager = StreamableHTTPSessionManager(app=self.server, stateless=True,
                                                    json_response=True)
        self.asgi = StreamableHTTPASGIApp(self.manager)

    @staticmethod
    def _handler(t: PaidTool) -> Callable[[dict[str, Any], MCPToolContext],
                                          Awaitable[dict[str, Any]]]:
        async def run(args: dict[str, Any], _ctx: MCPToolContext) -> dict[str, Any]:
            out = t.handler(args)
            return {"content": [{"type": "text", "text": orjson.dumps(out).decode()}],
                    "structuredContent": out}

        return run

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def _list(self, ctx: ServerRequestContext[Any, Any],
                    params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=t.name, description=t.description, input_schema=t.input_schema)
            for t in self.tools.values()])

    async def _call(self, ctx: ServerRequestContext[Any, Any],
                    params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = self.tools.get(params.name)
        if tool is None:
            raise MCPError(-32602, f"no tool named {params.name!r}")
        args = dict(params.arguments or {})
        wrapped = self._wrapped.get(tool.name)
        if wrapped is None:
            out = tool.handler(args)
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=orjson.dumps(out).decode())],
                structured_content=out)
        meta = dict(params.meta or {})
        return _call_result(await wrapped(args, {"_meta": meta, "toolName": tool.name}))
