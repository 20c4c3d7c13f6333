"""Risk routing: the first matching rule decides whether a proposal waits, runs or is refused.

Two things a caller could otherwise use to route its own request around a human:

* the risk level is the caller's word, so a proposal an agent files with its own key
  (``POST /v1/approvals`` with a key that has an agent) never matches an ``auto`` rule unless
  the operator's rule says ``agent_requests = true``;
* ``min_amount`` rules see the largest money amount of the proposal: the top-level
  ``amount`` or any money-named field in ``arguments`` (``amount``, ``total``, ``price``,
  ``cost``, ``*_usd``; ``*_cents`` / 100, ``*_micros`` / 1e6), at any depth, numbers or
  numeric strings. An amount keel cannot read counts as unbounded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from keel.approvals.models import Proposal, Requester
from keel.approvals.settings import ApprovalsSettings, RiskRule, Route

_MONEY = re.compile(r"^(?:.*_)?(amount|total|price|cost|sum|usd|dollars)(?:_usd|_dollars)?$")
_CENTS = re.compile(r"^(?:.*_)?cents$")
_MICROS = re.compile(r"^(?:.*_)?micros$")
_NUMBER = re.compile(r"^\$?[0-9]+(?:\.[0-9]+)?$")
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Routing:
    route: Route
    policy: str  # the rule that decided, recorded in the audit log


def _scale(key: str) -> float | None:
    k = key.strip().lower()
    if _CENTS.match(k):
        return 100.0
    if _MICROS.match(k):
        return 1e6
    if _MONEY.match(k):
        return 1.0
    return None


def _value(v: Any) -> float | None:
    """A money value's magnitude; inf for one that is money-named but unreadable."""
    if isinstance(v, bool):
        return math.inf
    if isinstance(v, int | float):
        return abs(float(v)) if math.isfinite(v) else math.inf
    if isinstance(v, str):
        s = v.strip().replace(",", "")
        return float(s.lstrip("$")) if _NUMBER.match(s) else math.inf
    return None  # a record or list: searched on its own


def argument_amount(arguments: Any, depth: int = 0) -> float | None:
    """The largest money amount among money-named fields of ``arguments``."""
    if depth > _MAX_DEPTH:
        return math.inf
    found: float | None = None
    items: list[tuple[str | None, Any]] = (
        list(arguments.items()) if isinstance(arguments, dict)
        else [(None, v) for v in arguments] if isinstance(arguments, list) else [])
    for key, v in items:
        amount: float | None = None
        scale = _scale(key) if isinstance(key, str) else None
        if scale is not None and v is not None:
            raw = _value(v)
            amount = raw / scale if raw is not None else None
        if amount is None and isinstance(v, dict | list):
            amount = argument_amount(v, depth + 1)
        if amount is not None:
            found = amount if found is None else max(found, amount)
    return found


def effective_amount(p: Proposal) -> float | None:
    """The amount rules compare: the top-level one or a larger one in the arguments."""
    inner = argument_amount(p.arguments)
    if inner is None:
        return p.amount
    return inner if p.amount is None else max(p.amount, inner)


def _matches(rule: RiskRule, p: Proposal, amount: float | None, by_agent: bool) -> bool:
    if rule.route == "auto" and by_agent and not rule.agent_requests:
        return False
    if rule.actions and not any(fnmatchcase(p.action, pat) for pat in rule.actions):
        return False
    if rule.risk_levels and p.risk_level not in {r.upper() for r in rule.risk_levels}:
        return False
    return rule.min_amount is None or (amount is not None and amount >= rule.min_amount)


def route(p: Proposal, settings: ApprovalsSettings,
          requester: Requester | None = None) -> Routing:
    """``requester``: who filed it over the API (None: keel itself, e.g. a held tool call)."""
    amount = effective_amount(p)
    by_agent = requester is not None and requester.agent is not None
    for rule in settings.rules:
        if _matches(rule, p, amount, by_agent):
            return Routing(rule.route, rule.name)
    if settings.default_route == "auto" and by_agent:
        return Routing("require", "default (agent requests never run unapproved by default)")
    return Routing(settings.default_route, "default")
