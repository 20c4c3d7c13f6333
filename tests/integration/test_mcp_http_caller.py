"""keel's direct ``tools/call`` to 2026-07-28 MCP servers, against a scripted aiohttp
server on 127.0.0.1 (JSON and SSE answers, errors, odd answers), and the real SDK server
through :class:`McpUpstream` (the direct path for plain tools, the SDK's for the rest)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mcp.shared.exceptions import MCPError
from pydantic import SecretStr

from keel.errors import ToolFailed
from keel.tools.mcp_http import ModernHttpCaller
from keel.tools.settings import McpServerSettings
from keel.tools.upstreams import McpUpstream

VERSION = "2026-07-28"
SERVER = Path(__file__).resolve().parents[1] / "tool_servers" / "crm_mcp.py"


class Scripted:
    def __init__(self) -> None:
        self.answer: tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), json.loads(await request.read())))
        status, ctype, body = self.answer
        return web.Response(status=status, body=body, headers={"content-type": ctype})


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Scripted, ModernHttpCaller]]:
    srv = Scripted()
    app = web.Application()
    app.router.add_post("/mcp", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    async with aiohttp.ClientSession(headers={"authorization": "Bearer tool-secret"}) as http:
        yield srv, ModernHttpCaller("crm", f"http://127.0.0.1:{port}/mcp", VERSION, http)
    await runner.cleanup()


def rpc(rid: int, **member: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid, **member}).encode()


async def test_sends_the_2026_envelope_and_reads_a_json_answer(
        scripted: tuple[Scripted, ModernHttpCaller]) -> None:
    srv, caller = scripted
    srv.answer = (200, "application/json", rpc(1, result={
        "content": [{"type": "text", "text": "ok"}], "isError": False,
        "resultType": "complete", "structuredContent": {"result": "ok"}}))
    result = await caller.call("issue_refund", {"amount_cents": 5}, {"x402/payment": {"a": 1}})
    assert result.content[0].text == "ok" and result.structured_content == {"result": "ok"}
    headers, body = srv.seen[0]
    assert headers["mcp-protocol-version"] == VERSION
    assert headers["mcp-method"] == "tools/call" and headers["mcp-name"] == "issue_refund"
    assert headers["Authorization"] == "Bearer tool-secret"
    assert body["method"] == "tools/call" and body["params"]["arguments"] == {"amount_cents": 5}
    meta = body["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == VERSION
    assert meta["io.modelcontextprotocol/clientCapabilities"] == {}
    assert meta["x402/payment"] == {"a": 1}  # the caller's meta rides along


async def test_reads_the_answer_at_the_end_of_an_sse_stream(
        scripted: tuple[Scripted, ModernHttpCaller]) -> None:
    srv, caller = scripted
    progress = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                           "params": {"progressToken": 1, "progress": 0.5}})
    answer = rpc(1, result={"content": [{"type": "text", "text": "done"}]}).decode()
    srv.answer = (200, "text/event-stream; charset=utf-8",
                  f": ping\r\n\r\nevent: message\r\ndata: {progress}\r\n\r\n"
                  f"event: message\r\ndata: {answer}\r\n\r\n".encode())
    result = await caller.call("read_customer", {})
    assert result.content[0].text == "done" and not result.is_error


async def test_errors_and_odd_answers(scripted: tuple[Scripted, ModernHttpCaller]) -> None:
    srv, caller = scripted
    srv.answer = (400, "application/json", rpc(1, error={"code": -32602, "message": "bad"}))
    with pytest.raises(MCPError) as err:
        await caller.call("t", {})
    assert err.value.error.code == -32602 and err.value.error.message == "bad"
    for answer, words in [
        ((502, "text/html", b"<h1>bad gateway</h1>"), "HTTP 502"),
        ((200, "application/json", rpc(99, result={"content": []})), "without a JSON-RPC"),
        ((200, "application/json", rpc(3, result={"resultType": "input_required"})),
         "more input"),
        ((200, "application/json", rpc(4, result={"content": "not a list"})), "malformed"),
    ]:
        srv.answer = answer
        if b'"id": 3' in answer[2] or b'"id": 4' in answer[2]:  # answer the next id
            srv.answer = (answer[0], answer[1], answer[2].replace(
                b'"id": 3', f'"id": {len(srv.seen) + 1}'.encode()).replace(
                b'"id": 4', f'"id": {len(srv.seen) + 1}'.encode()))
        with pytest.raises(ToolFailed) as failed:
            await caller.call("t", {})
        assert words in failed.value.message
        assert "tool-secret" not in failed.value.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_calls_a_real_2026_server_directly() -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)],
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not start"
                time.sleep(0.1)
        up = McpUpstream(McpServerSettings(name="crm", url=f"http://127.0.0.1:{port}/mcp",
                                           headers={"x-api-key": SecretStr("k")}))
        async with AsyncExitStack() as stack:
            specs = await up.start(stack)
            assert {s.name for s in specs} >= {"issue_refund", "read_customer"}
            assert up._direct is not None and "issue_refund" in up._direct_tools
            result = await up.call("issue_refund", {"customer_id": "c1", "amount_cents": 7})
            assert not result.is_error and "refunded 7 cents to c1" in result.content[0].text
            # the same answers as the SDK's client, a refusal of the server's own included
            assert up._client is not None and up._direct is not None
            for tool, args in [("issue_refund", {"customer_id": "c2", "amount_cents": 3}),
                               ("read_customer", {"customer_id": "c1"}),
                               ("issue_refund", {"customer_id": "c2"}),  # invalid arguments
                               ("no_such_tool", {})]:
                sdk = await up._client.call_tool(tool, args)
                direct = await up._direct.call(tool, args)
                assert direct.model_dump(exclude={"meta"}) == sdk.model_dump(exclude={"meta"})
    finally:
        proc.terminate()
        proc.wait(10)
