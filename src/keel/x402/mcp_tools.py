"""Paid tools behind the tool gateway: the x402 MCP transport, paid from agent wallets.

A paid MCP tool answers an unpaid call with an error result whose structured content is an
x402 ``PaymentRequired`` (the SDK's ``x402.mcp`` wrapper does this). When that happens, the
gateway (after Cedar allowed the call) hands the result to :class:`PaidToolCalls`: the same
checks, reservation and signature as ``/v1/fetch`` (:class:`keel.x402.payer.Payer`), then
the very same call again with ``_meta["x402/payment"]``. The answer's
``_meta["x402/payment-response"]`` settles the hold; the agent gets the tool's result with
keel's receipt in ``_meta["keel/payment"]``. Paid plain-HTTP tools arrive here in the same
shape (``keel.tools.upstreams.HttpToolUpstream`` maps x402 headers onto these ``_meta`` keys).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
import orjson
from pydantic import ValidationError
from x402.schemas import PaymentRequired, SettleResponse

from keel.errors import InvalidRequest, PaymentFailed, ToolFailed
from keel.tools.ports import PAYMENT_RECEIPT_META, ToolCall
from keel.tools.upstreams import X402_PAYMENT_META as PAYMENT_META
from keel.tools.upstreams import X402_PAYMENT_RESPONSE_META as PAYMENT_RESPONSE_META
from keel.x402.payer import Payer, Signed, digest, happened
from keel.x402.requirements import payment_required_from_object

log = logging.getLogger("keel.x402")

Retry = Callable[[dict[str, Any]], Awaitable[types.CallToolResult]]


def payment_required(result: types.CallToolResult, where: str) -> PaymentRequired | None:
    """The x402 terms in an error result (structured content, else the first text item)."""
    if not result.is_error:
        return None
    found = payment_required_from_object(result.structured_content, where)
    if found is not None:
        return found
    for item in result.content[:1]:
        if isinstance(item, types.TextContent):
            try:
                return payment_required_from_object(orjson.loads(item.text), where)
            except orjson.JSONDecodeError:
                return None
    return None


def settlement(result: types.CallToolResult) -> SettleResponse | None:
    raw = (result.meta or {}).get(PAYMENT_RESPONSE_META)
    if raw is None:
        return None
    try:
        return SettleResponse.model_validate(raw)
    except ValidationError:
        return SettleResponse(success=False, error_reason="malformed x402/payment-response",
                              transaction="", network="unknown")


# errors the MCP client makes up itself: the paid request may have run and settled
_CLIENT_SIDE = frozenset({types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT})


def _server_answered(exc: ToolFailed) -> bool:
    code = exc.extra.get("upstream_code")
    return code is not None and code not in _CLIENT_SIDE


class PaidToolCalls:
    """:class:`keel.tools.ports.ToolPayments` on top of agent wallets."""

    def __init__(self, payer: Payer) -> None:
        self.payer = payer

    async def handle(self, call: ToolCall, result: types.CallToolResult,
                     retry: Retry) -> types.CallToolResult:
        where = f"tool {call.tool!r} ({call.server})"
        resource = f"tool://{call.server}/{call.tool}"
        try:
            required = payment_required(result, where)
        except Exception as exc:
            await self.payer.unpayable(call.principal.tenant, call.agent, call.session_id,
                                       resource, "tools/call", exc)
            raise
        if required is None:
            return result
        if not call.session_id:
            raise InvalidRequest(
                f"{call.tool} is a paid tool and budgets are per session: send the session "
                "id in the x-keel-session header", param="x-keel-session")
        signed = await self.payer.prepare(
            call.principal.tenant, call.agent, call.session_id, resource, "tools/call",
            required, where, request_digest=digest(
                orjson.dumps(call.arguments, option=orjson.OPT_SORT_KEYS)))
        meta = {PAYMENT_META: signed.payload.model_dump(by_alias=True, exclude_none=True)}
        try:
            paid = await retry(meta)
        except ToolFailed as exc:
            if _server_answered(exc):  # a JSON-RPC error from the server: not settled
                await self.payer.failed(signed, f"the tool server refused the call: {exc}")
                raise
            raise self.payer.unknown_outcome(signed, where, exc.message) from None
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                await self.payer.failed(signed, f"not sent: {exc}")
            raise
        return await self._outcome(call, signed, paid, where)

    async def _outcome(self, call: ToolCall, signed: Signed, paid: types.CallToolResult,
                       where: str) -> types.CallToolResult:
        settle = settlement(paid)
        if happened(settle, not paid.is_error):
            receipt = await self.payer.settled(signed, settle, "ok")
            return paid.model_copy(update={"meta": {**(paid.meta or {}),
                                                    PAYMENT_RECEIPT_META: receipt.as_dict()}})
        if settle is not None and not settle.success:
            reason = settle.error_message or settle.error_reason or "settlement failed"
        else:
            try:
                again = payment_required(paid, where)
            except Exception:
                again = None
            reason = (again.error or "payment not accepted") if again is not None else ""
        if reason:
            await self.payer.failed(signed, reason)
            raise PaymentFailed(f"{where} refused the payment: {reason}; nothing was charged",
                                payment_id=signed.hold.id)
        # the tool failed after the payment was verified: x402 servers do not settle then
        await self.payer.failed(signed, "the tool answered an error; not settled")
        return paid
