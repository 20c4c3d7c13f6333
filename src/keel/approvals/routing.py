"""Risk routing: the first matching rule decides whether a proposal waits, runs or is refused."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from keel.approvals.models import Proposal
from keel.approvals.settings import ApprovalsSettings, RiskRule, Route


@dataclass(frozen=True)
class Routing:
    route: Route
    policy: str  # the rule that decided, recorded in the audit log


def _matches(rule: RiskRule, p: Proposal) -> bool:
    if rule.actions and not any(fnmatchcase(p.action, pat) for pat in rule.actions):
        return False
    if rule.risk_levels and p.risk_level not in {r.upper() for r in rule.risk_levels}:
        return False
    return rule.min_amount is None or (p.amount is not None and p.amount >= rule.min_amount)


def route(p: Proposal, settings: ApprovalsSettings) -> Routing:
    for rule in settings.rules:
        if _matches(rule, p):
            return Routing(rule.route, rule.name)
    return Routing(settings.default_route, "default")
