"""Budget sessions: opened by an operator or orchestrator, never conjured by an agent.

A session is the unit the session budget counts against. With ``wallets.sessions =
"issued"`` (the default) keel pays only for sessions it opened: an operator/admin key, or a
tenant key without an agent (the orchestrator), opens one for an agent with a budget; the
agent's own key may open sessions for itself too, at most ``agent_sessions_per_day`` a UTC
day and never with more than the configured session budget. A payment naming a session
that was not opened for that agent is refused (404 ``session_not_found``), so inventing a
new id never yields a fresh budget. Ids keel generates are unguessable (``ses_`` + 128
random bits); an operator may choose a readable id instead.

Every function takes one connection and runs inside the caller's transaction.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from keel.errors import Conflict, InvalidRequest, SessionClosed, SessionLimit, SessionNotFound
from keel.wallets.money import fmt_usd
from keel.wallets.tables import counters, insert_ignore, sessions

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
# the agent's quota row lives with the budget counters (same sweeper, same atomic update)
_QUOTA = (update(counters).where(counters.c.key == bindparam("ckey"),
                                 counters.c.calls + 1 <= bindparam("maxc"))
          .values(calls=counters.c.calls + 1))
_GET = select(sessions).where(sessions.c.id == bindparam("sid"))


@dataclass(frozen=True)
class Session:
    id: str
    tenant: str
    agent: str
    budget: int  # micro-USD
    max_calls: int
    opened_by: str
    by_agent: bool
    created_at: float
    expires_at: float
    closed_at: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "agent": self.agent,
                "budget_micros": self.budget, "budget": fmt_usd(self.budget),
                "max_calls": self.max_calls, "opened_by": self.opened_by,
                "by_agent": self.by_agent, "created_at": self.created_at,
                "expires_at": self.expires_at, "closed_at": self.closed_at}


def _session(row: Any) -> Session:
    return Session(row.id, row.tenant, row.agent, int(row.budget), int(row.max_calls),
                   row.opened_by, bool(row.by_agent), row.created_at, row.expires_at,
                   row.closed_at)


def quota_key(tenant: str, agent: str, now: float) -> str:
    day = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    return f"sessions:{tenant}:{agent}:{day}"


def open_session(conn: Connection, *, tenant: str, agent: str, budget: int, max_calls: int,
                 ttl_s: float, opened_by: str, session_id: str | None = None,
                 agent_quota: int | None = None) -> Session:
    """Insert a session. ``agent_quota`` (the agent opening its own) counts it against the
    agent's sessions of the day, atomically: concurrent opens cannot exceed it."""
    now = time.time()
    if session_id is None:
        session_id = "ses_" + secrets.token_urlsafe(16)
    elif not _ID.match(session_id):
        raise InvalidRequest("a session id is 1-100 characters: letters, digits and . _ : - "
                             "(starting with a letter or digit)", param="id")
    if agent_quota is not None:
        key = quota_key(tenant, agent, now)
        params = {"ckey": key, "maxc": agent_quota}
        if conn.execute(_QUOTA, params).rowcount != 1:
            if conn.execute(select(counters.c.key).where(counters.c.key == key)).first() \
                    is None:
                insert_ignore(conn, counters, key=key, limit_micros=None, max_calls=agent_quota,
                              spent=0, reserved=0, calls=0, expires_at=now + 2 * 86_400)
            if conn.execute(_QUOTA, params).rowcount != 1:
                raise SessionLimit(
                    f"agent {agent!r} opened {agent_quota} sessions today, the limit "
                    "(wallets.agent_sessions_per_day, reset at 00:00 UTC); ask an operator "
                    "or the orchestrator to open one (POST /v1/wallet/sessions with their "
                    "key)", limit=agent_quota, retry_after=86_400 - now % 86_400)
    if conn.execute(_GET, {"sid": session_id}).first() is not None:
        raise Conflict(f"session {session_id!r} already exists; sessions are opened once "
                       "(omit 'id' and keel generates one)", param="id")
    s = Session(session_id, tenant, agent, budget, max_calls, opened_by, agent_quota is not None,
                now, now + ttl_s, None)
    conn.execute(sessions.insert().values(
        id=s.id, tenant=tenant, agent=agent, budget=budget, max_calls=max_calls,
        opened_by=opened_by[:200], by_agent=int(s.by_agent), created_at=now,
        expires_at=s.expires_at, closed_at=None))
    return s


def find(conn: Connection, tenant: str, session_id: str) -> Session:
    row = conn.execute(_GET, {"sid": session_id}).first()
    if row is None or row.tenant != tenant:
        raise SessionNotFound(f"tenant {tenant!r} has no session {session_id!r}",
                              param="session_id")
    return _session(row)


def check(conn: Connection, tenant: str, agent: str, session_id: str,
          now: float | None = None) -> Session:
    """The open session ``session_id`` of this agent, or a clear refusal."""
    row = conn.execute(_GET, {"sid": session_id}).first()
    if row is None or row.tenant != tenant or row.agent != agent:
        # the same answer for "never opened" and "another agent's": ids are not an oracle
        raise SessionNotFound(
            f"session {session_id!r} was not opened for agent {agent!r}; budgets belong to "
            "sessions keel opened: ask the orchestrator or an operator for one, or open one "
            "with this agent's key (POST /v1/wallet/sessions, a few a day)",
            param="session_id")
    now = time.time() if now is None else now
    if row.closed_at is not None or row.expires_at <= now:
        why = "was closed" if row.closed_at is not None else "expired"
        raise SessionClosed(f"session {session_id!r} {why}; its budget cannot be used any "
                            "more: open a new session", param="session_id")
    return _session(row)


def close(conn: Connection, tenant: str, session_id: str, agent: str | None = None) -> Session:
    s = find(conn, tenant, session_id)
    if agent is not None and s.agent != agent:
        raise SessionNotFound(f"tenant {tenant!r} has no session {session_id!r}",
                              param="session_id")
    if s.closed_at is None:
        conn.execute(update(sessions).where(sessions.c.id == session_id,
                                            sessions.c.closed_at.is_(None))
                     .values(closed_at=time.time()))
    return find(conn, tenant, session_id)


def usage(conn: Connection, s: Session) -> dict[str, int]:
    """What the session has spent, has reserved, and how many paid calls it made."""
    key = f"session:{s.tenant}:{s.agent}:{s.id}"
    row = conn.execute(select(counters).where(counters.c.key == key)).first()
    if row is None:
        return {"spent_micros": 0, "reserved_micros": 0, "calls": 0}
    return {"spent_micros": int(row.spent), "reserved_micros": int(row.reserved),
            "calls": int(row.calls)}


def recent(conn: Connection, tenant: str | None, agent: str | None = None,
           limit: int = 100) -> list[dict[str, Any]]:
    """The newest sessions (of a tenant, of an agent) with what each has spent."""
    q = select(sessions).order_by(sessions.c.created_at.desc()).limit(limit)
    if tenant is not None:
        q = q.where(sessions.c.tenant == tenant)
    if agent is not None:
        q = q.where(sessions.c.agent == agent)
    rows = [_session(r) for r in conn.execute(q)]
    now = time.time()
    return [{**s.as_dict(), **usage(conn, s),
             "state": "closed" if s.closed_at is not None else
             "expired" if s.expires_at <= now else "open"} for s in rows]
