"""The wallets capability as one object: budgets, reservations, funding, the expiry sweeper."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, select

from keel.background import Periodic
from keel.errors import (
    BudgetExceeded,
    ConfigError,
    Conflict,
    InsufficientFunds,
    InvalidRequest,
    KeelError,
    NotFound,
    PayeeNotAllowed,
    PaymentApprovalPending,
    PermissionDenied,
    PolicyDenied,
    SessionNotFound,
)
from keel.storage.sql import Database
from keel.wallets import ledger, sessions
from keel.wallets.crypto import KeyCipher
from keel.wallets.hooks import (
    ApprovalTicket,
    PaymentApprovals,
    PaymentAuthorizer,
    PaymentIntent,
)
from keel.wallets.ledger import CounterSpec, Hold
from keel.wallets.metrics import WalletMetrics
from keel.wallets.money import fmt_usd
from keel.wallets.sessions import Session
from keel.wallets.settings import WalletSettings
from keel.wallets.store import PaymentSigner, Wallet, WalletStore
from keel.wallets.tables import accounts, payments

log = logging.getLogger("keel.wallets")
DAY_S = 86_400


@dataclass(frozen=True)
class Reservation:
    id: str
    wallet: Wallet
    intent: PaymentIntent
    expires_at: float


def cipher_from(settings: WalletSettings) -> KeyCipher:
    if settings.encryption_key is None or not settings.encryption_key.get_secret_value():
        raise ConfigError(
            "wallets.enabled is true but wallets.encryption_key is not set: set "
            'encryption_key = "${KEEL_WALLET_KEY}" in [wallets] (or KEEL_WALLETS__ENCRYPTION_KEY)'
            " to a secret of at least 32 characters; `keel wallet keygen` prints one"
        )
    return KeyCipher(settings.encryption_key.get_secret_value())


class WalletService:
    def __init__(self, settings: WalletSettings, db: Database,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = WalletStore(cipher_from(settings))
        self.metrics = WalletMetrics(registry or CollectorRegistry())
        self.authorizer: PaymentAuthorizer | None = None  # set by the policy capability
        self.approvals: PaymentApprovals | None = None  # set by the approvals capability
        self._payees = {p.lower() for p in settings.payees}
        self._signers: dict[str, PaymentSigner] = {}
        self._sweeper = Periodic("keel-payment-sweeper", settings.sweep_interval_s,
                                 self._sweep_step, error="payment-hold sweeper failed",
                                 logger=log, at_once=True)

    # -- wallets and funding ------------------------------------------------------------------

    def create_wallet(self, tenant: str, agent: str, *, key_ref: str | None = None) -> Wallet:
        return self.db.transaction(lambda c: self.store.create(c, tenant, agent,
                                                               key_ref=key_ref))

    def wallet(self, tenant: str, agent: str) -> Wallet:
        return self.db.transaction(lambda c: self.store.get(c, tenant, agent))

    def fund(self, tenant: str, agent: str, micros: int, memo: str = "") -> str:
        def run(c: Connection) -> str:
            w = self.store.get(c, tenant, agent)
            entry = ledger.fund(c, tenant, w.id, micros, memo)
            ledger.event(c, "funded", tenant=tenant, agent=agent, amount=micros, memo=memo)
            return entry

        return self.db.transaction(run)

    def balance(self, wallet: Wallet) -> dict[str, int]:
        def run(c: Connection) -> dict[str, int]:
            rows = c.execute(select(accounts.c.kind, accounts.c.balance).where(
                accounts.c.wallet_id == wallet.id)).all()
            return {kind: int(bal) for kind, bal in rows}

        return self.db.transaction(run)

    async def signer(self, wallet: Wallet) -> PaymentSigner:
        s = self._signers.get(wallet.id)
        if s is None:  # decrypt once per process; the key stays in this process only
            s = await self.db.run(lambda c: self.store.signer(c, wallet.id))
            self._signers[wallet.id] = s
        return s

    # -- sessions -----------------------------------------------------------------------------

    def open_session(self, tenant: str, agent: str, *, opened_by: str, by_agent: bool,
                     budget_micros: int | None = None, max_calls: int | None = None,
                     ttl_s: float | None = None, session_id: str | None = None) -> Session:
        """Open a budget session for ``agent``. An agent opening its own (``by_agent``) gets
        at most the configured session budget, call limit and lifetime, a generated id, and
        counts against ``agent_sessions_per_day``; operators may set all of them."""
        s = self.settings
        if budget_micros is not None and not 0 <= budget_micros <= 10**15:
            raise InvalidRequest("'budget_usd' must be between 0 and 1,000,000,000",
                                 param="budget_usd")
        if max_calls is not None and not 1 <= max_calls <= 10**9:
            raise InvalidRequest("'max_calls' must be between 1 and 1,000,000,000",
                                 param="max_calls")
        if ttl_s is not None and not 0 < ttl_s <= s.session_ttl_s:
            raise InvalidRequest(f"'ttl_s' must be in (0, {s.session_ttl_s:g}] "
                                 "(wallets.session_ttl_s)", param="ttl_s")
        if by_agent:
            if s.agent_sessions_per_day == 0:
                raise PermissionDenied(
                    "agent keys may not open budget sessions here "
                    "(wallets.agent_sessions_per_day = 0): the orchestrator or an operator "
                    "opens them")
            if session_id is not None:
                raise InvalidRequest("an agent cannot name its session: omit 'id'",
                                     param="id")
            if budget_micros is not None and budget_micros > s.session_budget:
                raise BudgetExceeded(
                    f"an agent may open sessions of at most {fmt_usd(s.session_budget)} "
                    "(wallets.session_budget_usd); ask an operator for more",
                    budget=s.session_budget)
            if max_calls is not None and max_calls > s.max_calls_per_session:
                raise InvalidRequest(f"an agent may open sessions of at most "
                                     f"{s.max_calls_per_session} paid calls",
                                     param="max_calls")
        quota = s.agent_sessions_per_day if by_agent else None

        def run(c: Connection) -> Session:
            self.store.get(c, tenant, agent)  # a typo in the agent name is a 404, not a session
            out = sessions.open_session(
                c, tenant=tenant, agent=agent,
                budget=s.session_budget if budget_micros is None else budget_micros,
                max_calls=s.max_calls_per_session if max_calls is None else max_calls,
                ttl_s=s.session_ttl_s if ttl_s is None else ttl_s, opened_by=opened_by,
                session_id=session_id, agent_quota=quota)
            ledger.event(c, "session_opened", tenant=tenant, agent=agent, session_id=out.id,
                         budget=out.budget, max_calls=out.max_calls, opened_by=opened_by,
                         expires_at=out.expires_at)
            return out

        return self.db.transaction(run)

    def close_session(self, tenant: str, session_id: str, actor: str,
                      agent: str | None = None) -> Session:
        def run(c: Connection) -> Session:
            out = sessions.close(c, tenant, session_id, agent)
            ledger.event(c, "session_closed", tenant=tenant, agent=out.agent,
                         session_id=session_id, actor=actor)
            return out

        return self.db.transaction(run)

    def session_info(self, tenant: str, session_id: str,
                     agent: str | None = None) -> dict[str, Any]:
        def run(c: Connection) -> dict[str, Any]:
            s = sessions.find(c, tenant, session_id)
            if agent is not None and s.agent != agent:
                raise SessionNotFound(f"tenant {tenant!r} has no session {session_id!r}",
                                      param="session_id")
            return {**s.as_dict(), **sessions.usage(c, s)}

        return self.db.transaction(run)

    async def check_session(self, tenant: str, agent: str, session_id: str) -> Session | None:
        """Refuse a session keel did not open for this agent (``sessions = "issued"``)."""
        if self.settings.sessions != "issued":
            return None
        return await self.db.run(lambda c: sessions.check(c, tenant, agent, session_id))

    # -- checks before any money moves ---------------------------------------------------------

    def precheck(self, intent: PaymentIntent) -> None:
        """Stateless rules: payee allow-list and the per-call cap (microseconds, no I/O)."""
        self._check_payee(intent)
        self._check_cap(intent)

    def _check_payee(self, intent: PaymentIntent) -> None:
        if "*" not in self._payees and intent.payee.lower() not in self._payees:
            self._refused(intent, "payee")
            raise PayeeNotAllowed(
                f"payee {intent.payee} is not on the allow-list (wallets.payees); "
                "refused before signing", payee=intent.payee)

    def _check_cap(self, intent: PaymentIntent) -> None:
        cap = self.settings.per_call_max
        if intent.amount_micros > cap:
            self._refused(intent, "per_call_cap")
            raise BudgetExceeded(
                f"per-call cap {fmt_usd(cap)}: price {fmt_usd(intent.amount_micros)} is above "
                "it; refused before signing", cap=cap, price=intent.amount_micros)

    def counter_specs(self, intent: PaymentIntent, now: float, *,
                      over_budget: bool = False,
                      session: Session | None = None) -> list[CounterSpec]:
        """The budgets a payment must fit in; ``over_budget`` (a human approved going over)
        keeps the counting and the loop guard but lifts the money limits. An issued
        ``session`` brings its own budget and call limit, and its counter outlives it."""
        s, t, a = self.settings, intent.tenant, intent.agent
        day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        minute = int(now // 60)
        budget = s.session_budget if session is None else session.budget
        max_calls = s.max_calls_per_session if session is None else session.max_calls
        keep = now + 7 * DAY_S if session is None else max(now, session.expires_at) + DAY_S
        session_limit = None if over_budget else budget
        day_limit = None if over_budget else s.daily_budget
        return [
            CounterSpec(f"session:{t}:{a}:{intent.session_id}", "session budget",
                        session_limit, max_calls, keep),
            CounterSpec(f"day:{t}:{a}:{day}", "daily budget", day_limit, None,
                        now + 2 * DAY_S),
            CounterSpec(f"minute:{t}:{a}:{minute}", "per-minute loop guard", None,
                        s.max_calls_per_minute, (minute + 2) * 60.0,
                        resets_at=(minute + 1) * 60.0),
        ]

    async def reserve(self, wallet: Wallet, intent: PaymentIntent,
                      authorization_expires_at: float) -> Reservation:
        """Payee, policy, cap, then the atomic reservation. Raises before anything is signed.

        A Cedar ``@approval`` payment, or (with ``over_budget = "approval"``) one over a
        budget or the cap, waits for a human (``PaymentApprovalPending``); once approved, the
        identical payment is reserved once, with the money limits lifted when it is over
        budget. One approval covers both reasons. If the reservation still fails (the wallet
        cannot cover it, the loop guard), the approval stays usable for the next repeat."""
        self._check_payee(intent)
        await self.admit_session(intent)
        policy_reason = await self._check_policy(intent)
        approved: ApprovalTicket | None = None
        if policy_reason is not None:
            approved = await self._ask(intent, policy_reason, "policy")
        try:
            try:
                self._check_cap(intent)
                return await self._reserve(wallet, intent, authorization_expires_at)
            except InsufficientFunds:
                raise
            except BudgetExceeded as exc:
                if self.approvals is None or self.settings.over_budget != "approval":
                    raise
                if approved is None:
                    approved = await self._ask(intent, exc.message, "budget")
                return await self._reserve(wallet, intent, authorization_expires_at,
                                           over_budget=True)
        except BaseException:
            if approved is not None and self.approvals is not None:
                await self.approvals.restore(approved)
            raise

    async def admit_session(self, intent: PaymentIntent) -> None:
        """Before anything else (a fetch, Cedar, a human): the session must be one keel
        opened for this agent; a refusal is counted and audited."""
        try:
            await self.check_session(intent.tenant, intent.agent, intent.session_id)
        except KeelError as exc:
            self._refused(intent, exc.code)
            await self._audit("refused", intent, reason=exc.message)
            raise

    async def _check_policy(self, intent: PaymentIntent) -> str | None:
        """Raises when Cedar refuses; returns the reason when a human must approve first."""
        if self.authorizer is None:
            return None
        decision = await self.authorizer.authorize(intent)
        if not decision.allowed:
            self._refused(intent, "policy")
            await self._audit("refused", intent, reason=f"policy: {decision.reason}")
            raise PolicyDenied(f"payment refused by policy: {decision.reason}; "
                               "refused before signing")
        if not decision.approval:
            return None
        if self.approvals is None:
            self._refused(intent, "policy")
            raise PolicyDenied(f"payment needs a human approval ({decision.reason}) and no "
                               "approval workflow is configured; refused before signing")
        return f"policy requires approval: {decision.reason}"

    async def _ask(self, intent: PaymentIntent, reason: str, kind: str) -> ApprovalTicket:
        """The approved ticket (claimed for this payment); raises otherwise."""
        assert self.approvals is not None
        ticket = await self.approvals.request(intent, reason, kind)
        if ticket.status == "approved":
            await self._audit("approved", intent, approval_id=ticket.id, reason=reason)
            return ticket
        if ticket.status == "pending":
            await self._audit("approval_pending", intent, approval_id=ticket.id, reason=reason)
            raise PaymentApprovalPending(
                f"{reason}; approval requested ({ticket.id}): repeat the same call once a "
                "human approved it", approval_id=ticket.id, approval_url=ticket.url)
        self._refused(intent, "approval_rejected")
        await self._audit("refused", intent, approval_id=ticket.id, reason=ticket.message)
        error = BudgetExceeded if kind == "budget" else PolicyDenied
        raise error(f"{reason}; {ticket.message or 'the approver refused'} ({ticket.id})",
                    approval_id=ticket.id)

    async def _reserve(self, wallet: Wallet, intent: PaymentIntent,
                       authorization_expires_at: float, *,
                       over_budget: bool = False) -> Reservation:
        expires_at = authorization_expires_at + self.settings.reservation_grace_s
        issued = self.settings.sessions == "issued"

        def run(c: Connection) -> str:
            now = time.time()
            # in the same transaction as the reservation: a session closed meanwhile is refused
            session = sessions.check(c, intent.tenant, intent.agent, intent.session_id, now) \
                if issued else None
            hold = Hold(tenant=intent.tenant, agent=intent.agent, wallet_id=wallet.id,
                        session_id=intent.session_id, url=intent.url, payee=intent.payee,
                        network=intent.network, asset=intent.asset,
                        amount=intent.amount_micros,
                        counters=self.counter_specs(intent, now, over_budget=over_budget,
                                                    session=session),
                        expires_at=expires_at)
            rid = ledger.reserve(c, hold)
            ledger.event(c, "reserved", tenant=intent.tenant, agent=intent.agent,
                         session_id=intent.session_id, payment_id=rid, url=intent.url,
                         payee=intent.payee, network=intent.network, asset=intent.asset,
                         amount=intent.amount_micros, over_budget=over_budget or None)
            return rid

        t0 = time.perf_counter()
        try:
            rid = await self.db.run(run)
        except KeelError as exc:
            self._refused(intent, exc.code)
            await self._audit("refused", intent, reason=exc.message)
            raise
        finally:
            self.metrics.reserve_latency.observe(time.perf_counter() - t0)
        return Reservation(rid, wallet, intent, expires_at)

    async def settle(self, r: Reservation, tx_hash: str, receipt: dict[str, Any]) -> None:
        def run(c: Connection) -> bool:
            done = ledger.settle(c, r.id, tx_hash)
            ledger.event(c, "settled", tenant=r.intent.tenant, agent=r.intent.agent,
                         session_id=r.intent.session_id, payment_id=r.id, **receipt)
            return done

        await self.db.run(run)
        i = r.intent
        self.metrics.payments.labels(i.tenant, i.agent, "settled").inc()
        self.metrics.spend.labels(i.tenant, i.agent, i.payee).inc(i.amount_micros / 1e6)

    async def release(self, r: Reservation, reason: str, outcome: str = "failed") -> None:
        def run(c: Connection) -> bool:
            done = ledger.release(c, r.id, reason)
            ledger.event(c, "released", tenant=r.intent.tenant, agent=r.intent.agent,
                         session_id=r.intent.session_id, payment_id=r.id, reason=reason)
            return done

        await self.db.run(run)
        self.metrics.payments.labels(r.intent.tenant, r.intent.agent, outcome).inc()

    def refund(self, tenant: str, payment_id: str, memo: str = "") -> dict[str, Any]:
        """Book money a payee gave back for a settled payment (payee -> available, and the
        session/day budgets count it as unspent). Only settled payments of ``tenant``."""
        def run(c: Connection) -> dict[str, Any]:
            row = c.execute(select(payments).where(payments.c.id == payment_id,
                                                   payments.c.tenant == tenant)).first()
            if row is None:
                raise NotFound(f"tenant {tenant!r} has no payment {payment_id!r}; list them "
                               "with `keel wallet ledger`", param="payment_id")
            if row.status != "settled":
                raise Conflict(f"payment {payment_id} is {row.status}; only settled payments "
                               "can be refunded", param="payment_id")
            if not ledger.refund(c, payment_id, memo):  # a concurrent refund won the race
                raise Conflict(f"payment {payment_id} was refunded concurrently",
                               param="payment_id")
            ledger.event(c, "refunded", tenant=tenant, agent=row.agent,
                         session_id=row.session_id, payment_id=payment_id, memo=memo or None,
                         amount=row.amount)
            return {"id": payment_id, "agent": row.agent, "amount_micros": int(row.amount),
                    "amount": fmt_usd(int(row.amount)), "payee": row.payee,
                    "status": "refunded"}

        out = self.db.transaction(run)
        self.metrics.payments.labels(tenant, out["agent"], "refunded").inc()
        return out

    async def audit(self, kind: str, intent: PaymentIntent, **detail: Any) -> None:
        await self._audit(kind, intent, **detail)

    async def _audit(self, kind: str, intent: PaymentIntent, payment_id: str | None = None,
                     **detail: Any) -> None:
        def run(c: Connection) -> None:
            ledger.event(c, kind, tenant=intent.tenant, agent=intent.agent,
                         session_id=intent.session_id, payment_id=payment_id, url=intent.url,
                         payee=intent.payee, network=intent.network,
                         amount=intent.amount_micros, **detail)

        await self.db.run(run)

    def _refused(self, intent: PaymentIntent, reason: str) -> None:
        self.metrics.refusals.labels(intent.tenant, reason).inc()
        self.metrics.payments.labels(intent.tenant, intent.agent, "refused").inc()

    # -- expiry sweeper -------------------------------------------------------------------------

    async def _sweep_step(self) -> None:
        await self.sweep()

    async def sweep(self) -> list[str]:
        released = await self.db.run(ledger.expire)
        if released:
            self.metrics.open_holds.inc(len(released))
            log.warning("released %d expired payment holds", len(released))
        return released

    def start(self) -> None:
        self._sweeper.start()

    async def aclose(self) -> None:
        await self._sweeper.stop()
