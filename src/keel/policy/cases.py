"""Policy test cases (``keel policy test``) and shadow replays (``keel policy shadow``).

A case file is YAML or JSON: a list of cases (or ``{"cases": [...]}``), each

```yaml
- name: refund under the limit
  agent: support-bot          # Agent::"default/support-bot" (tenant defaults to "default")
  tool: issue_refund
  arguments: {customer_id: c1, amount_cents: 4999}
  at: "2026-03-02T10:00"      # local time in tools.timezone (or now: {hour: 10, ...})
  spend_cents: 0              # the session's spend so far
  expect: allow               # allow | deny | approval
```
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import yaml
from sqlalchemy import Connection, select

from keel.errors import InvalidRequest
from keel.policy.authorizer import (
    Authorizer,
    AuthzDecision,
    AuthzRequest,
    PolicySnapshot,
    principal_id,
)
from keel.tools.decision_log import tool_decisions

OUTCOMES = ("allow", "deny", "approval")


@dataclass(frozen=True)
class CaseResult:
    name: str
    expect: str
    decision: AuthzDecision

    @property
    def passed(self) -> bool:
        return self.decision.outcome == self.expect


def load_cases(path: Path) -> list[dict[str, Any]]:
    try:
        raw = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = orjson.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"{path} is not valid {path.suffix.lstrip('.') or 'YAML'}: "
                             f"{exc}") from None
    if isinstance(data, dict):
        data = data.get("cases")
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise InvalidRequest(f"{path} must hold a list of cases (mappings with tool, "
                             "arguments and expect)")
    return data


def _now(case: dict[str, Any], tz: ZoneInfo, where: str) -> dict[str, int]:
    from keel.tools.gateway import now_record

    base = now_record(datetime(2026, 1, 5, 12, 0, tzinfo=tz))  # a Monday, noon
    at = case.get("at")
    if at is not None:
        try:
            moment = datetime.fromisoformat(str(at))
        except ValueError:
            raise InvalidRequest(f"{where}: 'at' must be an ISO time like "
                                 "2026-03-02T20:00") from None
        base = now_record(moment if moment.tzinfo else moment.replace(tzinfo=tz))
    now = case.get("now") or {}
    if not isinstance(now, dict) or not all(isinstance(v, int) for v in now.values()):
        raise InvalidRequest(f"{where}: 'now' must map fields like hour to integers")
    return {**base, **now}


def to_request(case: dict[str, Any], tz: ZoneInfo, where: str) -> AuthzRequest:
    tool = case.get("tool")
    if not isinstance(tool, str):
        raise InvalidRequest(f"{where}: 'tool' (the action name) is required")
    return AuthzRequest(
        agent=str(case.get("agent", "agent")), tenant=str(case.get("tenant", "default")),
        tool=tool, arguments=case.get("arguments", {}), now=_now(case, tz, where),
        session_id=str(case.get("session", "")), spend_cents=int(case.get("spend_cents", 0)))


def run_cases(authorizer: Authorizer, snap: PolicySnapshot, cases: list[dict[str, Any]],
              tz: ZoneInfo) -> list[CaseResult]:
    out = []
    for i, case in enumerate(cases, 1):
        name = str(case.get("name") or f"case {i}")
        expect = str(case.get("expect", "")).lower()
        if expect not in OUTCOMES:
            raise InvalidRequest(f"{name}: 'expect' must be one of {', '.join(OUTCOMES)}")
        roles = case.get("roles")
        req = to_request(case, tz, name)
        if roles is not None:  # per-case roles override the configured ones
            authorizer.roles[principal_id(req.tenant, req.agent)] = [str(r) for r in roles]
            authorizer._agents.pop((req.agent, req.tenant), None)
        out.append(CaseResult(name, expect, authorizer.authorize(req, snap)))
    return out


@dataclass(frozen=True)
class ShadowChange:
    decision_id: str
    ts: float
    agent: str
    tool: str
    before: str
    after: str
    before_policies: list[str]
    after_policies: list[str]


@dataclass(frozen=True)
class ShadowReport:
    replayed: int
    skipped: int  # rows logged without arguments (tools.policy.log_arguments = false)
    changes: list[ShadowChange]


def logged_rows(c: Connection, since: float, limit: int) -> list[dict[str, Any]]:
    q = (select(tool_decisions).where(tool_decisions.c.ts >= since)
         .order_by(tool_decisions.c.ts).limit(limit))
    return [r._asdict() for r in c.execute(q)]


def shadow(authorizer: Authorizer, candidate: PolicySnapshot, rows: list[dict[str, Any]]
           ) -> ShadowReport:
    changes: list[ShadowChange] = []
    replayed = skipped = 0
    for r in rows:
        if not r["context"]:
            skipped += 1
            continue
        replayed += 1
        d = authorizer.decide(r["agent"], r["tenant"], r["action"], orjson.loads(r["context"]),
                              candidate)
        if d.outcome != r["decision"]:
            changes.append(ShadowChange(r["id"], r["ts"], r["agent"], r["action"],
                                        r["decision"], d.outcome,
                                        orjson.loads(r["policy_ids"] or "[]"),
                                        list(d.policy_ids)))
    return ShadowReport(replayed, skipped, changes)
