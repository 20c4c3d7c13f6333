"""The tool gateway: every agent tool call is authorized by Cedar before the tool runs.

``ToolGateway.call`` is the one path shared by ``/mcp`` and ``POST /v1/tools/{name}``:
size check -> Cedar decision (fail closed) and, for a spending tool, the amount reserved
against the session's spend in the same step -> [approval hook] -> the tool -> the
reservation committed (or released when the call did not succeed), and every decision goes
to the decision log. Denials raise :class:`PolicyDenied` carrying the
deciding policy ids; the tool is never called for them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import weakref
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import mcp_types as types
import orjson

from keel.background import Periodic
from keel.errors import (
    ApprovalRequired,
    ConfigError,
    KeelError,
    PayloadTooLarge,
    PolicyDenied,
    PromptBlocked,
    StorageError,
    ToolNotFound,
)
from keel.gateway.context import Principal
from keel.gateway.validation import check_depth
from keel.policy.authorizer import Authorizer, AuthzDecision, AuthzRequest
from keel.policy.schema import ToolSignature
from keel.policy.store import PolicyStore
from keel.storage.sql import Database
from keel.tools.decision_log import DecisionLog, args_hash
from keel.tools.ports import (
    PAYMENT_RECEIPT_META,
    ApprovalHook,
    SessionCheck,
    SessionSpend,
    ToolCall,
    ToolPayments,
    ToolScanner,
)
from keel.tools.settings import ToolSettings
from keel.tools.spend import SqlSessionSpend, session_key
from keel.tools.upstreams import ToolSpec, Upstream, build_upstreams

log = logging.getLogger("keel.tools")

Clock = Callable[[], datetime]
# how often a decision is retaken when another process changed the session's spend between
# reading it and reserving the amount; past that the call is denied (fail closed)
RESERVE_TRIES = 20


def agent_id(p: Principal) -> str:
    """The Cedar principal id: the key's agent, else ``key:<key id>``."""
    return p.agent or f"key:{p.key_id}"


def now_record(moment: datetime) -> dict[str, int]:
    return {"hour": moment.hour, "minute": moment.minute, "weekday": moment.isoweekday(),
            "day": moment.day, "month": moment.month, "year": moment.year,
            "epoch": int(moment.timestamp())}


def time_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"tools.timezone {name!r} is not a known IANA time zone "
                          "(e.g. 'UTC', 'Europe/Berlin')") from None


class ToolGateway:
    def __init__(
        self, settings: ToolSettings, db: Database, *, clock: Clock | None = None,
        approvals: ApprovalHook | None = None, spend: SessionSpend | None = None,
        upstreams: list[Upstream] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.tz = time_zone(settings.timezone)
        self.clock: Clock = clock or (lambda: datetime.now(self.tz))
        self.approvals = approvals
        self.payments: ToolPayments | None = None  # set by the wallets capability (x402)
        self.scanner: ToolScanner | None = None  # set by the firewall capability
        # set by wallets with issued sessions: an agent's x-keel-session must be one keel
        # opened, so rotating ids cannot reset the session spend policies see
        self.sessions: SessionCheck | None = None
        # actions that are not tools but are decided by the same policies (x402:pay)
        self.extra_actions: list[ToolSignature] = []
        self.spend: SessionSpend = spend or SqlSessionSpend(db)
        # one decide-and-reserve at a time per session in this process (other processes
        # are kept honest by the compare-and-set in SessionSpend.reserve)
        self._spend_locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = \
            weakref.WeakValueDictionary()
        self.store = PolicyStore(db)
        self.log = DecisionLog(db)
        self.upstreams = upstreams if upstreams is not None else build_upstreams(
            settings.servers, settings.http)
        self.tools: dict[str, tuple[ToolSpec, Upstream]] = {}
        self.authorizer = Authorizer([], roles=settings.policy.roles)
        self.on_start: list[Callable[[AsyncExitStack], Any]] = []  # e.g. the /mcp manager
        self._stack: AsyncExitStack | None = None
        self._reloader: Periodic | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ids = itertools.count(1)
        self._id_prefix = "td_" + os.urandom(5).hex()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the tools, load the active policy, serve /mcp, log and watch the store.

        The connections (anyio task groups inside the MCP clients and the /mcp session
        manager) live in one runner task, so start() and aclose() may be awaited from
        different tasks (as ASGI lifespans and test fixtures do)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._runner = asyncio.create_task(self._run(ready), name="keel-tools")
        await ready
        self.log.start()
        if self.settings.policy.reload_s > 0:  # a failed reload keeps the version we have
            self._reloader = Periodic("keel-policy", self.settings.policy.reload_s,
                                      self._reload_step, error="policy reload failed",
                                      logger=log)
            self._reloader.start()

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            stack = await self.connect()
            for hook in self.on_start:
                await hook(stack)
        except BaseException as exc:
            await self._close_stack()
            if not ready.done():
                ready.set_exception(exc)
            return
        ready.set_result(None)
        try:
            await self._stop.wait()
        finally:
            await self._close_stack()

    async def _close_stack(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def connect(self) -> AsyncExitStack:
        """Connect the tools and load the active policy (what the CLI needs)."""
        stack = AsyncExitStack()
        await stack.__aenter__()
        self._stack = stack
        try:
            for up in self.upstreams:
                for spec in await up.start(stack):
                    if spec.name in self.tools:
                        raise ConfigError(f"tool {spec.name!r} is offered by both "
                                          f"{self.tools[spec.name][0].server!r} and "
                                          f"{spec.server!r}; tool names must be unique")
                    self.tools[spec.name] = (spec, up)
            self.authorizer = Authorizer(self.signatures(), roles=self.settings.policy.roles)
            await self.reload(force=True)
        except BaseException:
            await self._close_stack()
            raise
        return stack

    async def aclose(self) -> None:
        if self._reloader is not None:
            await self._reloader.stop()
            self._reloader = None
        await self.log.aclose()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            self._stop.set()
            await runner
        else:  # connect() only (the CLI): same task
            await self._close_stack()

    def signatures(self) -> list[ToolSignature]:
        sigs = [ToolSignature(s.name, s.server, s.input_schema) for s, _ in self.tools.values()]
        clash = {s.name for s in self.extra_actions} & {s.name for s in sigs}
        if clash:
            raise ConfigError(f"a tool is named {sorted(clash)[0]!r}, which keel reserves for "
                              "its own policy action; rename the tool")
        return sigs + self.extra_actions

    async def reload(self, *, force: bool = False) -> bool:
        """Load the store's active version if it changed; in-flight calls keep theirs."""
        version = await asyncio.to_thread(self.store.active_version)
        if not force and version == self.authorizer.snapshot.version:
            return False
        active = await asyncio.to_thread(self.store.active)
        if active is None:
            self.authorizer.load("", None)
        else:
            snap = self.authorizer.load(active.text, active.version)
            if snap.policies is None:
                log.error("policy version %s is unusable, denying every tool call: %s",
                          active.version, snap.problem)
        return True

    async def _reload_step(self) -> None:
        await self.reload()

    # -- the call path --------------------------------------------------------------------

    def spec(self, name: str) -> ToolSpec:
        found = self.tools.get(name)
        if found is None:
            raise ToolNotFound(f"no tool named {name!r}; list tools with GET /v1/tools or "
                               "`keel tools list`", param="name")
        return found[0]

    async def authorize(self, principal: Principal, tool: str, arguments: Any,
                        session_id: str = "") -> AuthzDecision:
        """Cedar's decision, with the spend of the call's session (see :func:`session_key`:
        without ``x-keel-session`` the agent's sessionless spend, never a fresh 0)."""
        snapshot = self.authorizer.snapshot
        if "spend_cents" not in snapshot.text:
            # no policy of this version reads the session's spend: skip the database read
            # (a call costs one SQL round trip less); a version applied meanwhile is
            # decided again with the spend
            decision = self._authorize(principal, tool, arguments, session_id, 0)
            if decision.version == snapshot.version:
                return decision
        key = session_key(session_id, agent_id(principal))
        spent = await self.spend.spent_cents(principal.tenant, key)
        return self._authorize(principal, tool, arguments, session_id, spent)

    def _authorize(self, principal: Principal, tool: str, arguments: Any, session_id: str,
                   spent: int) -> AuthzDecision:
        return self.authorizer.authorize(AuthzRequest(
            agent=agent_id(principal), tenant=principal.tenant, tool=tool, arguments=arguments,
            now=now_record(self.clock().astimezone(self.tz)), session_id=session_id,
            spend_cents=spent))

    def spend_amount(self, tool: str, arguments: Any) -> int:
        """The cents a call of ``tool`` adds to its session (``spend_args``); a negative or
        non-integer amount adds nothing, so it can never lower the recorded spend."""
        found = self.tools.get(tool)
        if found is None or not found[0].spend_arg or not isinstance(arguments, dict):
            return 0
        cents = arguments.get(found[0].spend_arg)
        if isinstance(cents, bool) or not isinstance(cents, int):
            return 0
        return max(cents, 0)

    async def _decide_and_reserve(self, principal: Principal, tool: str, arguments: Any,
                                  session_id: str, cents: int) -> tuple[AuthzDecision, int]:
        """Decide and, when the call may go ahead, reserve ``cents`` against the spend the
        decision saw, atomically: concurrent calls cannot all pass a spend cap on the same
        old value. Returns the decision and the cents reserved."""
        if cents <= 0:
            return await self.authorize(principal, tool, arguments, session_id), 0
        tenant, key = principal.tenant, session_key(session_id, agent_id(principal))
        lock = self._spend_locks.get((tenant, key))
        if lock is None:
            lock = self._spend_locks[(tenant, key)] = asyncio.Lock()
        async with lock:
            for _ in range(RESERVE_TRIES):
                spent = await self.spend.spent_cents(tenant, key)
                decision = self._authorize(principal, tool, arguments, session_id, spent)
                if decision.outcome == "deny":
                    return decision, 0
                if await self.spend.reserve(tenant, key, cents, spent):
                    return decision, cents
        return AuthzDecision(
            "deny", (), "the session's spend kept changing while the call was decided (calls "
            "in other workers); the call is denied, retry it", 0.0, decision.version,
            decision.context), 0

    async def _settle(self, principal: Principal, session_id: str, cents: int,
                      ok: bool) -> None:
        if cents <= 0:
            return
        key = session_key(session_id, agent_id(principal))
        done = self.spend.commit if ok else self.spend.release
        # shielded: a cancelled request must still settle what it reserved
        await asyncio.shield(done(principal.tenant, key, cents))

    async def decide(self, principal: Principal, action: str, arguments: Any,
                     session_id: str = "") -> AuthzDecision:
        """Authorize an action that is not a tool call (a payment) and log the decision."""
        decision = await self.authorize(principal, action, arguments, session_id)
        row = self._row(self._next_id(), principal, action, arguments, session_id, decision)
        self._submit(row, {"allow": "allowed", "deny": "denied"}.get(decision.outcome, "held"))
        return decision

    async def call(self, principal: Principal, tool: str, arguments: Any,
                   session_id: str = "") -> tuple[str, AuthzDecision, types.CallToolResult]:
        """Authorize and run one call; returns (decision id, decision, tool result)."""
        self.spec(tool)  # an unknown tool is a bad call (404 / -32602), not a policy denial
        check_depth(arguments, where="tool arguments")  # /mcp bodies skip parse_json
        arguments = with_defaults(self.tools.get(tool), arguments)
        size = len(orjson.dumps(arguments)) if arguments is not None else 0
        if size > self.settings.max_argument_bytes:
            raise PayloadTooLarge(f"tool arguments are {size} bytes; the limit is "
                                  f"{self.settings.max_argument_bytes} "
                                  "(tools.max_argument_bytes)")
        if self.scanner is not None:  # injections in the arguments never reach the tool
            await self.scanner.check_arguments(principal, tool, arguments)
        if session_id and principal.agent and self.sessions is not None:
            await self.sessions.check_session(principal.tenant, principal.agent, session_id)
        decision_id = self._next_id()
        decision, reserved = await self._decide_and_reserve(
            principal, tool, arguments, session_id, self.spend_amount(tool, arguments))
        row = self._row(decision_id, principal, tool, arguments, session_id, decision)
        if decision.outcome == "deny":
            self._submit(row, "denied")
            raise PolicyDenied(f"tool call denied: {decision.reason}", param=tool,
                               policy_ids=list(decision.policy_ids), decision_id=decision_id)
        if self.tools[tool][0].spend_arg or decision.outcome == "approval":
            # a call that moves money or needed a human: its row is in the table before the
            # tool runs, so a crash cannot lose the record of a refund that happened (other
            # rows go in the next batch, <= flush_interval_s later)
            row["outcome"] = "started"
            try:
                await self.log.write_ahead(row)
            except Exception:
                await self._settle(principal, session_id, reserved, False)
                raise StorageError("the tool call was not run: its decision could not be "
                                   "recorded (database unavailable); retry shortly") from None
        ok = False
        try:
            result = await self._call_tool(principal, tool, arguments, session_id,
                                           decision, decision_id, row)
            ok = not result.is_error
        finally:
            await self._settle(principal, session_id, reserved, ok)
        return decision_id, decision, result

    async def _call_tool(self, principal: Principal, tool: str, args: dict[str, Any],
                         session_id: str, decision: AuthzDecision, decision_id: str,
                         row: dict[str, Any]) -> types.CallToolResult:
        """The allowed (or held) call: approval, the tool, payment, the result scan."""
        spec, upstream = self.tools[tool]
        call = ToolCall(decision_id, spec.name, spec.server, args, principal,
                        agent_id(principal), session_id, decision.version)
        if decision.outcome == "approval":
            await self._approve(call, decision, row)
        try:
            result = await upstream.call(tool, args)
            if result.is_error and self.payments is not None:  # a paid tool's 402?
                result = await self.payments.handle(
                    call, result, lambda meta: upstream.call(tool, args, meta))
            if self.scanner is not None:  # indirect injection: the result goes to a model
                await self.scanner.check_result(principal, tool, result)
        except PromptBlocked:
            self._submit(row, "blocked")
            raise
        except KeelError:
            self._submit(row, "tool_error")
            raise
        paid = (result.meta or {}).get(PAYMENT_RECEIPT_META)
        if isinstance(paid, dict):
            row["reason"] = f"{row['reason']}; paid {paid.get('amount')} ({paid.get('id')})"
        self._submit(row, "tool_error" if result.is_error else "ok")
        return result

    async def _approve(self, call: ToolCall, decision: AuthzDecision,
                       row: dict[str, Any]) -> None:
        ids = list(decision.policy_ids)
        name, decision_id = call.tool, call.id
        if self.approvals is None:
            self._submit(row, "held")
            raise ApprovalRequired(
                f"{decision.reason}, and no approval workflow is configured, so the call is "
                "denied", param=name, policy_ids=ids, decision_id=decision_id)
        outcome = await self.approvals.request_approval(call, ids)
        if outcome.status == "approved":
            row["reason"] = f"{decision.reason}; approved by {outcome.approver or 'a human'}"
            return
        self._submit(row, "rejected" if outcome.status == "rejected" else "held")
        if outcome.status == "pending":
            raise ApprovalRequired(
                f"{decision.reason}: the call is held for approval "
                f"({outcome.message or 'waiting for a human'})", param=name,
                policy_ids=ids, decision_id=decision_id, approval_id=outcome.approval_id)
        raise PolicyDenied(f"the approver rejected the call: {outcome.message or 'no reason'}",
                           param=name, policy_ids=ids, decision_id=decision_id,
                           approval_id=outcome.approval_id)

    def _next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):08x}"

    def _row(self, decision_id: str, principal: Principal, tool: str, arguments: Any,
             session_id: str, d: AuthzDecision) -> dict[str, Any]:
        keep = self.settings.policy.log_arguments and d.context is not None
        return {
            "id": decision_id, "ts": time.time(), "tenant": principal.tenant,
            "agent": agent_id(principal), "session": session_id or None, "action": tool,
            "args_hash": args_hash(arguments),
            "context": orjson.dumps(d.context).decode() if keep else None,
            "decision": d.outcome, "policy_ids": orjson.dumps(list(d.policy_ids)).decode(),
            "reason": d.reason, "latency_us": round(d.latency_us, 1),
            "policy_version": d.version, "outcome": None,
        }

    def _submit(self, row: dict[str, Any], outcome: str) -> None:
        row["outcome"] = outcome
        self.log.submit(row)


def with_defaults(found: tuple[ToolSpec, Any] | None, arguments: Any) -> Any:
    """``arguments`` with the tool schema's top-level ``default`` values filled in for the
    properties the caller left out. The tool (a pydantic-typed MCP server) would fill them
    itself, so without this the policy and the spend counter judged an absent argument
    while the tool ran with its default: ``amount_cents: int = 9999`` refunded 9,999
    cents under a cap the policy never saw. The tool then receives exactly what was
    judged."""
    if found is None or not isinstance(arguments, dict):
        return arguments
    props = found[0].input_schema.get("properties")
    if not isinstance(props, dict):
        return arguments
    missing = {name: prop["default"] for name, prop in props.items()
               if isinstance(prop, dict) and "default" in prop and name not in arguments}
    return {**arguments, **missing} if missing else arguments
