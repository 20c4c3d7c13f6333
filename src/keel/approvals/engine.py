"""ApprovalEngine: the Python API behind ``POST /v1/approvals``, the console, the CLI and the
tool gateway's approval hook.

``request()`` routes a proposal, records it and starts its DBOS workflow; ``decide()``
records exactly one winning decision (conditional update, audit row and one-time
reference in one transaction) and wakes the workflow; the workflow's steps call back into
``resolve`` / ``execute`` / ``deny`` / ``notify``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from keel.approvals import store
from keel.approvals.handlers import HandlerContext, HandlerRegistry, call
from keel.approvals.models import (
    APPROVED,
    AUTO_APPROVED,
    AUTO_DENIED,
    DENIED,
    PENDING,
    TIMED_OUT,
    Approval,
    Proposal,
    Requester,
)
from keel.approvals.notify import Notifier
from keel.approvals.routing import route
from keel.config import Settings
from keel.errors import (
    ApprovalAlreadyDecided,
    Conflict,
    InvalidRequest,
    KeelError,
    NotFound,
    ReferenceExpired,
    ReferenceUsed,
)
from keel.storage.sql import Database

log = logging.getLogger("keel.approvals")

# Sends the wake-up message to a workflow: (workflow id, topic, message, idempotency key)
Sender = Callable[[str, str, dict[str, Any], str], Awaitable[None]]


@dataclass(frozen=True)
class Decider:
    """Who decides, and through which channel (recorded in the audit log)."""

    actor: str
    via: str  # "api" | "link" | "slack" | "console" | "cli"
    ip: str | None = None


class ApprovalHandle:
    def __init__(self, engine: ApprovalEngine, approval: Approval) -> None:
        self.engine = engine
        self.id = approval.id
        self.approval = approval

    async def status(self) -> Approval:
        self.approval = await self.engine.get(self.id)
        return self.approval

    async def wait(self, timeout_s: float | None = None) -> Approval:
        """Until the workflow finished (action run, denied or timed out) or ``timeout_s``."""
        self.approval = await self.engine.wait(self.id, timeout_s)
        return self.approval

    @property
    def approved(self) -> bool:
        return self.approval.status in (APPROVED, AUTO_APPROVED)


class ApprovalEngine:
    def __init__(self, settings: Settings, db: Database, registry: HandlerRegistry, *,
                 notifier: Notifier | None = None, sender: Sender | None = None,
                 starter: Callable[[], Awaitable[None]] | None = None,
                 public_url: str | None = None) -> None:
        self.settings = settings
        self.cfg = settings.approvals
        self.db = db
        self.registry = registry
        self.notifier = notifier or Notifier(self.cfg, labels=registry.labels)
        self.sender = sender
        self.starter = starter  # launches DBOS on first use (see ApprovalsService)
        s = settings.server
        self.public_url = (public_url or self.cfg.public_url or f"http://{s.host}:{s.port}"
                           ).rstrip("/")
        self._workflow: Any = None
        self._asl: Any = None
        self.wait_for_decision: Any = None  # the durable wait, for ASL tasks

    def bind_workflow(self, workflow: Any, wait_for_decision: Any) -> None:
        self._workflow = workflow
        self.wait_for_decision = wait_for_decision

    def bind_asl(self, execution: Any) -> None:
        self._asl = execution

    async def run_asl(self, definition: dict[str, Any], data: Any,
                      workflow_id: str | None = None, opts: dict[str, Any] | None = None
                      ) -> Any:
        """Start an ASL execution; returns the DBOS handle (``await h.get_result()``).
        ``opts``: execution id, workflow name, started_at (see keel.workflows.machine)."""
        from dbos import DBOS, SetWorkflowID

        if self._asl is None and self.starter is not None:
            await self.starter()
        if self._asl is None:
            raise KeelError("workflows are not running in this process (DBOS not launched)")
        wid = workflow_id or "asl-" + store.new_id().removeprefix("apr_")
        o = {"started_at": time.time(), **(opts or {})}
        with SetWorkflowID(wid):
            return await DBOS.start_workflow_async(self._asl, definition, data, o)

    def link(self, ref: str) -> str:
        return f"{self.public_url}/approvals/r/{ref}"

    # -- requests --------------------------------------------------------------------------

    async def request(self, p: Proposal, requester: Requester | None = None) -> ApprovalHandle:
        """Start an approval. ``requester`` (from the HTTP API) is who really asked: it
        replaces ``p.requested_by`` and goes into the audit row with key, agent and IP."""
        if requester is not None:
            p = p.model_copy(update={"requested_by": requester.label})
        if self._workflow is None and self.starter is not None:
            await self.starter()
        if self._workflow is None:
            raise KeelError("approvals are not running in this process (DBOS not launched)")
        timeout_s = p.timeout_s or self.cfg.timeout_s
        r = route(p, self.cfg, requester)
        status = {"require": PENDING, "auto": AUTO_APPROVED, "deny": AUTO_DENIED}[r.route]
        approval_id = store.new_id()
        wid = f"approval-{approval_id}"
        now = time.time()

        def create(c: Any) -> Approval:
            # An idempotency key names one request: reusing it (in this tenant) for another
            # action or other arguments is refused, never answered with the first's result.
            other = store.key_used_for_other(c, p)
            if other is not None:
                raise Conflict(
                    f"idempotency_key {p.idempotency_key!r} was already used for another "
                    f"request (approval {other.id}, action {other.action!r}, other "
                    "arguments or action); send a new idempotency_key for a new request, or "
                    "repeat the same action and arguments to retry", param="idempotency_key")
            store.insert(c, p, approval_id=approval_id, workflow_id=wid, kind="action",
                         policy=r.policy, status=status, timeout_s=timeout_s, now=now)
            detail = f"policy={r.policy} route={r.route} args_hash={p.arguments_hash()}"
            if requester is not None:
                detail += " " + requester.audit_detail()
            store.add_audit(c, approval_id, "requested", actor=p.requested_by or None,
                            ip=requester.ip if requester is not None else None,
                            channel="api", now=now, detail=detail)
            got = store.get(c, approval_id)
            assert got is not None
            return got

        a = await self.db.run(create)
        await self._start(a)
        return ApprovalHandle(self, a)

    async def _start(self, a: Approval) -> None:
        from dbos import DBOS, SetWorkflowID

        with SetWorkflowID(a.workflow_id):
            await DBOS.start_workflow_async(self._workflow, a.id, a.status, a.created_at,
                                        a.expires_at, list(self.cfg.reminders))

    async def reconcile(self) -> int:
        """At start-up: restart workflows never started and re-send decided-but-unfinished
        decisions (a crash between the decision commit and the send). Idempotent."""
        from dbos import DBOS

        rows = await self.db.run(store.undelivered)
        fixed = 0
        for approval_id, wid, status in rows:
            st = await DBOS.get_workflow_status_async(wid)
            if st is None:
                a = await self.get(approval_id)
                await self._start(a)
                fixed += 1
            elif status != PENDING and self.sender is not None:
                await self.sender(wid, f"decision:{approval_id}", {"status": status},
                                  f"decision:{approval_id}")
        return fixed

    # -- reads -------------------------------------------------------------------------------

    async def get(self, approval_id: str) -> Approval:
        a = await self.db.run(lambda c: store.get(c, approval_id))
        if a is None:
            raise NotFound(f"no approval with id {approval_id!r}")
        return a

    async def list(self, f: store.ListFilter) -> list[Approval]:
        return await self.db.run(lambda c: store.query(c, f))

    async def wait(self, approval_id: str, timeout_s: float | None) -> Approval:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.02
        while True:
            a = await self.get(approval_id)
            if a.done or (deadline is not None and time.monotonic() >= deadline):
                return a
            await asyncio.sleep(delay if deadline is None
                                else max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 1.5, 0.25)

    # -- decisions ---------------------------------------------------------------------------

    async def decide(self, decision: str, who: Decider, *, approval_id: str | None = None,
                     ref: str | None = None, note: str | None = None, output: Any = None,
                     error: str | None = None, cause: str | None = None) -> Approval:
        """Approve or deny. Exactly one decision wins; every attempt is audited.

        For a waiting ASL task (``.waitForTaskToken``) ``output`` becomes the task's result
        on approve (SendTaskSuccess); ``error`` / ``cause`` its failure on deny
        (SendTaskFailure; the cause defaults to the note)."""
        if decision not in ("approve", "deny"):
            raise InvalidRequest("decision must be 'approve' or 'deny'", param="decision")
        if output is not None and decision != "approve":
            raise InvalidRequest("output goes with approve; send error and cause with deny",
                                 param="output")
        if (error is not None or cause is not None) and decision != "deny":
            raise InvalidRequest("error and cause go with deny; send output with approve",
                                 param="error")
        task_result = {k: v for k, v in (("output", output), ("error", error),
                                         ("cause", cause)) if v is not None}
        status = APPROVED if decision == "approve" else DENIED
        now = time.time()

        def run(c: Any) -> tuple[Approval | None, KeelError | None]:
            aid = approval_id
            if ref is not None:
                info = store.lookup_ref(c, ref)
                if info is None:
                    store.add_audit(c, None, "decision", accepted=False, actor=who.actor,
                                    ip=who.ip, channel=who.via, now=now,
                                    detail="unknown reference")
                    return None, NotFound("unknown approval reference; use the newest link")
                aid = info["approval_id"]
                err: KeelError | None = None
                if info["used_at"] is not None:
                    err = ReferenceUsed("this approval link was already used")
                elif info["expires_at"] <= now:
                    err = ReferenceExpired("this approval link has expired")
                if err is not None:
                    store.add_audit(c, aid, "decision", accepted=False, actor=who.actor,
                                    ip=who.ip, channel=who.via, now=now, detail=err.code)
                    return None, err
            assert aid is not None
            a = store.get(c, aid)
            if a is None:
                return None, NotFound(f"no approval with id {aid!r}")
            if task_result and a.kind != "asl":
                return None, InvalidRequest("output, error and cause apply only to approvals "
                                            "a workflow task waits for", param="output")
            if a.status == PENDING and a.expires_at <= now:
                err = ReferenceExpired("this approval has expired (auto-denied on timeout)")
            elif not store.set_decision(c, aid, status, actor=who.actor, ip=who.ip,
                                        via=who.via, note=note, now=now):
                current = store.get(c, aid)
                assert current is not None
                err = ApprovalAlreadyDecided(
                    f"approval {aid} was already decided: {current.status}"
                    + (f" by {current.decided_by}" if current.decided_by else ""))
            else:
                err = None
            store.add_audit(c, aid, "decision", accepted=err is None, actor=who.actor,
                            ip=who.ip, channel=who.via, now=now,
                            detail=f"{decision}" + (f" rejected: {err.code}" if err else "")
                            + (f" note={note}" if note else ""))
            if err is not None:
                return None, err
            if ref is not None:
                store.use_ref(c, ref, now)
            if task_result:
                store.set_task_result(c, aid, task_result)
            return store.get(c, aid), None

        a, err = await self.db.run(run)
        if err is not None:
            raise err
        assert a is not None
        if self.sender is not None:
            await self.sender(a.workflow_id, f"decision:{a.id}", {"status": status},
                              f"decision:{a.id}")
        return a

    # -- workflow steps ----------------------------------------------------------------------

    async def resolve(self, approval_id: str) -> str:
        """The current status; a pending approval past its expiry becomes ``timed_out``."""
        now = time.time()

        def run(c: Any) -> str:
            a = store.get(c, approval_id)
            assert a is not None
            if a.status == PENDING and now >= a.expires_at:
                if store.set_decision(c, approval_id, TIMED_OUT, actor="timeout", ip=None,
                                      via="timeout", note=None, now=now):
                    store.add_audit(c, approval_id, "timed_out", actor="timeout", now=now,
                                    detail="no decision before expiry: auto-deny")
                    return TIMED_OUT
                current = store.get(c, approval_id)
                assert current is not None
                return current.status
            return a.status

        return await self.db.run(run)

    async def execute(self, approval_id: str) -> dict[str, Any]:
        """Run the approved action once per idempotency key (ledger claim, then handler)."""
        a = await self.get(approval_id)
        if not self.registry.has(a.action):
            # No handler: the requester (e.g. the tool gateway) runs the action itself.
            return await self._finish(a, "approved", None, "approved; run by the requester")
        key = await self.db.run(lambda c: store.idempotency_key(c, approval_id))
        # The ledger is scoped by tenant: another tenant's key of the same name is another
        # entry, so it can neither block this run nor hand its result to this approval.
        claim = await self.db.run(lambda c: store.ledger_begin(
            c, a.tenant, key, approval_id, a.action, a.args_hash, time.time()))
        if claim.mismatch:
            # Fail closed: the key ran another request; neither run this one under it nor
            # report the other's result (creation refuses such reuse; this is a backstop).
            reused = (f"idempotency key {key!r} was already used for another request of "
                      "this tenant; the action did not run")
            return await self._finish(a, "failed", {"error": reused}, reused)
        if claim.prior is not None:
            raw = claim.prior["result"]  # stored as JSON text: decode, not wrap in a string
            return await self._finish(a, "executed", orjson.loads(raw) if raw else None,
                                      "already executed")
        ctx = HandlerContext(approval_id=a.id, idempotency_key=key)
        try:
            result = await call(self.registry.get(a.action), dict(a.arguments), ctx)
            error = None
        except Exception as exc:  # the action's failure is the outcome, not a crash
            result, error = None, f"{type(exc).__name__}: {exc}"
        await self.db.run(lambda c: store.ledger_end(c, a.tenant, key, result, error,
                                                     time.time()))
        if error is not None:
            return await self._finish(a, "failed", {"error": error}, error)
        return await self._finish(a, "executed", result, "action ran")

    async def deny(self, approval_id: str, status: str) -> dict[str, Any]:
        a = await self.get(approval_id)
        outcome = TIMED_OUT if status == TIMED_OUT else "denied"
        handler = self.registry.denial(a.action)
        result = None
        if handler is not None:
            ctx = HandlerContext(approval_id=a.id)
            try:
                result = await call(handler, dict(a.arguments), ctx)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {exc}"}
        return await self._finish(a, outcome, result, f"{status}: denial branch ran")

    async def _finish(self, a: Approval, outcome: str, result: Any, detail: str
                      ) -> dict[str, Any]:
        now = time.time()

        def run(c: Any) -> None:
            store.finish(c, a.id, outcome, result, now)
            store.add_audit(c, a.id, outcome, actor="workflow", now=now, detail=detail)

        await self.db.run(run)
        return {"approval_id": a.id, "outcome": outcome, "result": result}

    async def notify(self, approval_id: str, event: str) -> None:
        """Send ``event`` on every channel; each message gets its own one-time reference.
        Audit rows are ``notified:<event>`` so they never read as the request itself."""
        a = await self.get(approval_id)
        if event == "reminder" and a.status != PENDING:
            return
        if event == "reminder":
            await self.db.run(lambda c: store.bump_reminders(c, approval_id))
        log.info("approval %s %s: action=%s status=%s", a.id, event, a.action, a.status)
        for channel in self.notifier.channels():
            ref = await self.new_reference(a.id, channel) if a.status == PENDING else None
            d = await self.notifier.send(channel, a, event, ref,
                                         self.link(ref) if ref else None)
            ok, detail = d.ok, d.detail

            def record(c: Any, ch: str = channel, ok: bool = ok, detail: str = detail) -> None:
                store.add_audit(c, a.id, f"notified:{event}" if ok else f"notify_failed:{event}",
                                actor="workflow", channel=ch, detail=detail, accepted=ok)

            await self.db.run(record)
        if not self.notifier.channels():
            await self.db.run(lambda c: store.add_audit(
                c, a.id, f"notified:{event}", actor="workflow", channel="console",
                detail="listed in the console and `keel approvals list`"))

    async def new_reference(self, approval_id: str, channel: str) -> str:
        a = await self.get(approval_id)
        now = time.time()
        return await self.db.run(lambda c: store.new_ref(c, a.id, channel, a.expires_at, now))
