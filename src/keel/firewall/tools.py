"""The firewall on tool traffic (``/mcp`` and ``/v1/tools``): arguments and results.

Tool results are the classic indirect-injection path (a fetched page or an e-mail that tells
the model what to do), so they are judged like a user turn, role ``tool_result``; arguments
are judged as ``tool_arguments``. Every string in the JSON is judged (object keys too),
walked iteratively so deep nesting cannot exhaust the stack; binary content (images, audio,
blobs that are not UTF-8 text) carries no instructions for a model and is skipped, a blob
that is text is decoded and judged. More text than ``firewall.max_scan_chars`` is a 413,
never skipped. Mode per tenant and the ``tools`` route: ``block`` raises
:class:`~keel.errors.PromptBlocked` (403 / MCP error -32003), ``flag`` logs and counts.
Tool traffic never strikes an end user: a result's author is a third party.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from typing import Any

import mcp_types as types

from keel.errors import PromptBlocked
from keel.firewall.extract import ScanItem
from keel.firewall.identity import mode_for
from keel.firewall.stage import FirewallStage, size_guard
from keel.gateway.context import Principal

log = logging.getLogger("keel.firewall")
ROUTE = "tools"


def json_strings(value: Any) -> list[str]:
    """Every string in a JSON value (keys included), without recursion."""
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for k, item in v.items():
                if isinstance(k, str):
                    out.append(k)
                stack.append(item)
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return out


def result_texts(result: types.CallToolResult) -> list[str]:
    """The text a model would read from a tool result."""
    out: list[str] = []
    for block in result.content or []:
        if isinstance(block, types.TextContent):
            out.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            res = block.resource
            if isinstance(res, types.TextResourceContents):
                out.append(res.text)
            elif isinstance(res, types.BlobResourceContents):
                # binary data (not UTF-8 text) carries no instructions for a model
                with contextlib.suppress(binascii.Error, ValueError):
                    out.append(base64.b64decode(res.blob, validate=True).decode("utf-8"))
    if result.structured_content is not None:
        out.extend(json_strings(result.structured_content))
    return out


class ToolFirewall:
    """Implements :class:`keel.tools.ports.ToolScanner` with the gateway's firewall."""

    def __init__(self, stage: FirewallStage) -> None:
        self.stage = stage
        self.settings = stage.settings

    async def check_arguments(self, principal: Principal, tool: str, arguments: Any) -> None:
        await self._judge(principal, tool, "tool_arguments", json_strings(arguments),
                          "the tool arguments")

    async def check_result(self, principal: Principal, tool: str,
                           result: types.CallToolResult) -> None:
        await self._judge(principal, tool, "tool_result", result_texts(result),
                          "the tool result")

    async def _judge(self, principal: Principal, tool: str, role: str, texts: list[str],
                     what: str) -> None:
        mode = mode_for(self.settings, principal.tenant, ROUTE)
        if mode == "off" or not texts:
            return
        items = [ScanItem(role, t) for t in texts]
        size_guard(items, self.settings.max_scan_chars, what)
        verdict = await self.stage.judge(principal.tenant, items)
        if verdict is None:
            return
        metrics = self.stage.metrics
        if mode == "flag":
            metrics.flags.labels(verdict.layer, verdict.rule).inc()
            log.warning("firewall (flag): %s of %r for tenant %s matched %s:%s", what, tool,
                        principal.tenant, verdict.layer, verdict.rule)
            return
        metrics.blocks.labels(verdict.layer, verdict.rule).inc()
        raise PromptBlocked(
            f"{what} of {tool!r} were blocked by the prompt-injection firewall (rule "
            f"{verdict.rule}, {verdict.category})" if role == "tool_arguments" else
            f"{what} of {tool!r} was withheld by the prompt-injection firewall: it carries "
            f"instructions for the model (rule {verdict.rule}, {verdict.category}); an admin "
            "can allow-list the rule or the exact text (role tool_result)",
            rule=verdict.rule, layer=verdict.layer, role=role)
