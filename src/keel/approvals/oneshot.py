"""Approvals for a repeatable request: file once, find it again, let it through once.

An agent that was told "pending" repeats its request later. The request is identified by a
key (a hash of what would run); repeating it finds the same approval instead of filing a new
one. Once a human approved, the repeat goes through exactly once (claimed through the
approvals action ledger); a denied or expired approval is reported as rejected once, and a
further repeat files a new request. Used by tool calls (:mod:`.tool_hook`) and payments
(:mod:`.payment_hook`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, select

from keel.approvals import store
from keel.approvals.models import APPROVED, AUTO_APPROVED, PENDING, Approval, Proposal
from keel.tools.ports import ApprovalOutcome

if TYPE_CHECKING:
    from keel.approvals.service import ApprovalsService


# idempotency keys keel files approvals under; the approvals API refuses them from clients,
# so an agent cannot file (or auto-approve) the approval its own held request would find
RESERVED_KEY_PREFIXES = ("tool-call:", "payment:")


def reserved_key(key: str | None) -> bool:
    return key is not None and key.startswith(RESERVED_KEY_PREFIXES)


def request_key(prefix: str, fields: dict[str, Any]) -> str:
    assert f"{prefix}:".startswith(RESERVED_KEY_PREFIXES), prefix
    blob = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return f"{prefix}:" + hashlib.sha256(blob).hexdigest()[:40]


def _matches(a: Approval, p: Proposal) -> bool:
    """Defence in depth: an approval only counts for the very request keel would file."""
    return (a.tenant == p.tenant and a.action == p.action and a.arguments == p.arguments
            and a.requested_by == p.requested_by)


def _latest(c: Connection, tenant: str, key: str) -> Approval | None:
    t = store.approvals
    row = c.execute(select(t.c.id).where(t.c.tenant == tenant, t.c.idempotency_key == key)
                    .order_by(t.c.created_at.desc()).limit(1)).first()
    return store.get(c, row[0]) if row else None


class OneShotApprovals:
    def __init__(self, service: ApprovalsService, wait_s: float = 0.0, *,
                 consumer: str = "keel") -> None:
        self.service = service
        self.wait_s = wait_s
        self.consumer = consumer
        # one ask at a time per (tenant, key) in this process: parallel repeats of a call
        # whose approval was just used would each file a new request otherwise
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    async def ask(self, tenant: str, key: str, proposal: Callable[[], Proposal],
                  pending_hint: str) -> ApprovalOutcome:
        k = (tenant, key)
        lock, users = self._locks.get(k, (asyncio.Lock(), 0))
        self._locks[k] = (lock, users + 1)
        try:
            async with lock:
                return await self._ask(tenant, key, proposal, pending_hint)
        finally:
            lock, users = self._locks[k]
            if users <= 1:
                del self._locks[k]
            else:
                self._locks[k] = (lock, users - 1)

    async def _ask(self, tenant: str, key: str, proposal: Callable[[], Proposal],
                   pending_hint: str) -> ApprovalOutcome:
        engine = self.service.engine
        expected = proposal()
        found = await engine.db.run(lambda c: _latest(c, tenant, key))
        if found is not None and not _matches(found, expected):
            found = None
        if found is not None and found.status == PENDING:
            return self._pending(found, pending_hint)
        if found is not None and found.status in (APPROVED, AUTO_APPROVED):
            if await self._consume(found):
                return self._approved(found)
        elif found is not None and await self._consume(found):
            return self._rejected(found)
        # none yet, or the last one was used / its refusal reported: file a new request
        approval = (await engine.request(expected)).approval
        if approval.status == PENDING and self.wait_s > 0:
            approval = await engine.wait(approval.id, self.wait_s)
        if approval.status == PENDING:
            return self._pending(approval, pending_hint)
        if await self._consume(approval) and approval.status in (APPROVED, AUTO_APPROVED):
            return self._approved(approval)
        return self._rejected(approval)

    async def _consume(self, a: Approval) -> bool:
        """Claim the approval for one run; False when it was used before."""
        def claim(c: Connection) -> bool:
            ledger_key = f"{a.id}:consumed"
            now = time.time()
            claim = store.ledger_begin(c, a.tenant, ledger_key, a.id, a.action, a.args_hash,
                                       now)
            if claim.prior is not None or claim.mismatch:
                return False
            store.ledger_end(c, a.tenant, ledger_key, {"consumed_by": self.consumer}, None,
                             now)
            return True

        return bool(await self.service.engine.db.run(claim))

    async def restore(self, approval_id: str) -> None:
        """Undo :meth:`ask`'s claim: the approved request did not go through after all
        (e.g. the wallet could not cover it), so the next repeat may still use it."""
        key = f"{approval_id}:consumed"

        def forget(c: Connection) -> None:
            a = store.get(c, approval_id)
            if a is not None:
                store.ledger_forget(c, a.tenant, key)

        await self.service.engine.db.run(forget)

    @staticmethod
    def _pending(a: Approval, hint: str) -> ApprovalOutcome:
        return ApprovalOutcome(
            "pending", f"approval {a.id} is waiting for a human (poll GET /v1/approvals/{a.id});"
                       f" {hint}", approval_id=a.id)

    @staticmethod
    def _approved(a: Approval) -> ApprovalOutcome:
        return ApprovalOutcome("approved", approval_id=a.id, approver=a.decided_by,
                               extra={"status": a.status})

    @staticmethod
    def _rejected(a: Approval) -> ApprovalOutcome:
        return ApprovalOutcome("rejected", f"approval {a.id} was {a.status}",
                               approval_id=a.id, approver=a.decided_by)
