"""Risk routing: the first matching rule decides whether a proposal waits, runs or is refused.

Two things a caller could otherwise use to route its own request around a human:

* the risk level is the caller's word, so a proposal an agent files with its own key
  (``POST /v1/approvals`` with a key that has an agent) never matches an ``auto`` rule unless
  the operator's rule says ``agent_requests = true``;
* ``min_amount`` rules see the largest money amount of the proposal: the top-level
  ``amount`` or any money-named field in ``arguments`` (a name with a word such as
  ``amount``, ``total``, ``price``, ``cost``, ``fee``, ``refund``, ``balance`` or a currency,
  in snake or camel case; ``cents`` / 100, ``micros`` / 1e6) and every number inside a
  money-named record, at any depth, numbers or numeric strings. An amount keel cannot read
  counts as unbounded, and a field name that is not ASCII after NFKC normalisation (a
  homoglyph, a zero-width character) counts as money.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from keel.approvals.models import Proposal, Requester
from keel.approvals.settings import ApprovalsSettings, RiskRule, Route

# words of a field name that make it money: "amount", "total_price", "amountCents",
# "refund_eur", "grandTotal"; a number inside a money-named record ({"refund": {"value":
# 500}}) counts too
_MONEY_WORDS = frozenset({
    "amount", "total", "subtotal", "price", "cost", "sum", "fee", "fees", "charge", "payment",
    "refund", "balance", "credit", "debit", "payout", "transfer", "value", "money",
    "usd", "eur", "gbp", "jpy", "cad", "aud", "chf", "cny", "inr", "dollars", "euros",
    "pounds", "cents", "micros"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NUMBER = re.compile(r"^\$?[0-9]+(?:\.[0-9]+)?$")
_MAX_DEPTH = 16


@dataclass(frozen=True)
class Routing:
    route: Route
    policy: str  # the rule that decided, recorded in the audit log


def _scale(key: str) -> float | None:
    """What divides a money-named field's value into dollars, or None (not money). A name
    that is not plain ASCII once normalised (a Cyrillic a in "amount", a zero-width
    space) counts as money: keel cannot tell what it means, so it fails closed."""
    key = "".join(c for c in unicodedata.normalize("NFKC", key)
                  if unicodedata.category(c) != "Cf")
    if not key.isascii():
        return 1.0
    words = set(re.split(r"[_\-\s.]+", _CAMEL.sub("_", key.strip()).lower()))
    if not words & _MONEY_WORDS or words == {"value"}:  # a bare "value" only inside money
        return None
    if "cents" in words:
        return 100.0
    if "micros" in words:
        return 1e6
    return 1.0


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


def argument_amount(arguments: Any, depth: int = 0, money: bool = False) -> float | None:
    """The largest money amount among money-named fields of ``arguments`` (``money``: the
    record is itself money-named, so every number in it counts)."""
    if depth > _MAX_DEPTH:
        return math.inf
    found: float | None = None
    items: list[tuple[str | None, Any]] = (
        list(arguments.items()) if isinstance(arguments, dict)
        else [(None, v) for v in arguments] if isinstance(arguments, list) else [])
    for key, v in items:
        amount: float | None = None
        scale = _scale(key) if isinstance(key, str) else None
        if scale is None and money and not isinstance(v, dict | list):
            scale = 1.0
        if scale is not None and v is not None:
            raw = _value(v)
            amount = raw / scale if raw is not None else None
        if amount is None and isinstance(v, dict | list):
            amount = argument_amount(v, depth + 1, money or scale is not None)
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
