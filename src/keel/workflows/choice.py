"""Choice state rules: comparators, their ``...Path`` forms, type tests, And / Or / Not.

As in Step Functions, a rule whose ``Variable`` (or ``...Path`` operand) matches nothing is
``States.Runtime`` and fails the execution: a Choice never falls through to ``Default``
because a field is missing. ``IsPresent`` is the way to branch on a missing field.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from keel.errors import InvalidRequest
from keel.workflows import paths

_NUM = (int, float)
RELATIONS = ("Equals", "LessThan", "GreaterThan", "LessThanEquals", "GreaterThanEquals")
COMPARATORS = {f"{k}{r}" for k in ("String", "Numeric", "Timestamp") for r in RELATIONS
               } | {"BooleanEquals", "StringMatches"}
TYPE_TESTS = {"IsPresent", "IsNull", "IsString", "IsNumeric", "IsBoolean", "IsTimestamp"}


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _ts(v: Any) -> datetime | None:
    if not isinstance(v, str):
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


def _matches(value: str, pattern: str) -> bool:
    """``StringMatches``: ``*`` is the only wildcard; ``\\*`` and ``\\\\`` escape."""
    rx = "".join(".*" if tok == "*" else re.escape(tok[-1])
                 for tok in re.findall(r"\\.|\*|[^\\*]", pattern))
    return re.fullmatch(rx, value, re.DOTALL) is not None


def _cmp(op: str, a: Any, b: Any) -> bool:
    kind, rel = "", op
    for prefix in ("String", "Numeric", "Boolean", "Timestamp"):
        if op.startswith(prefix):
            kind, rel = prefix, op[len(prefix):]
    if kind == "Boolean":
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if kind == "Numeric" and not (_is_num(a) and _is_num(b)):
        return False
    if kind == "String" and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if rel == "Matches":
        return _matches(a, b)
    if kind == "Timestamp":
        a, b = _ts(a), _ts(b)
        if a is None or b is None:
            return False
    return bool({"Equals": a == b, "LessThan": a < b, "GreaterThan": a > b,
                 "LessThanEquals": a <= b, "GreaterThanEquals": a >= b}[rel])


def evaluate(rule: dict[str, Any], data: Any) -> bool:
    if "And" in rule:
        return all(evaluate(r, data) for r in rule["And"])
    if "Or" in rule:
        return any(evaluate(r, data) for r in rule["Or"])
    if "Not" in rule:
        return not evaluate(rule["Not"], data)
    var = paths.get(rule["Variable"], data)
    for test in TYPE_TESTS:
        if test in rule:
            want = bool(rule[test])
            got = {"IsPresent": var is not paths.MISSING, "IsNull": var is None,
                   "IsString": isinstance(var, str), "IsNumeric": _is_num(var),
                   "IsBoolean": isinstance(var, bool),
                   "IsTimestamp": _ts(var) is not None}[test]
            return got == want
    if var is paths.MISSING:
        raise paths.PathError(
            f"Invalid path {rule['Variable']!r}: the Choice state's condition path "
            "references a field that is not in the input (use IsPresent to test for it)")
    for op in COMPARATORS:
        if op in rule:
            return _cmp(op, var, rule[op])
        if op + "Path" in rule:
            return _cmp(op, var, paths.resolve(rule[op + "Path"], data))
    raise paths.PathError(f"choice rule has no supported comparator: {sorted(rule)}")


def check(rule: Any, where: str, *, top: bool = True) -> None:
    """Load-time check of one rule (and its nested rules)."""
    if not isinstance(rule, dict):
        raise InvalidRequest(f"{where}: a choice rule is an object")
    if top and not isinstance(rule.get("Next"), str):
        raise InvalidRequest(f"{where}: a top-level choice rule needs Next")
    if not top and "Next" in rule:
        raise InvalidRequest(f"{where}: a nested choice rule must not have Next")
    for op in ("And", "Or"):
        if op in rule:
            if not isinstance(rule[op], list) or not rule[op]:
                raise InvalidRequest(f"{where}: {op} takes a non-empty list of rules")
            for i, r in enumerate(rule[op]):
                check(r, f"{where}.{op}[{i}]", top=False)
            return
    if "Not" in rule:
        check(rule["Not"], f"{where}.Not", top=False)
        return
    paths.check(rule.get("Variable"), f"{where}.Variable", nullable=False)
    ops = [k for k in rule if k in COMPARATORS or k in TYPE_TESTS
           or (k.endswith("Path") and k[:-4] in COMPARATORS)]
    if len(ops) != 1:
        raise InvalidRequest(f"{where}: a rule needs exactly one comparator (e.g. "
                             f"StringEquals, NumericGreaterThan, IsPresent), got {ops or 'none'}")
    if ops[0].endswith("Path"):
        paths.check(rule[ops[0]], f"{where}.{ops[0]}", nullable=False)
