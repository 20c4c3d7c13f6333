"""Choice state rules: comparators, their ``...Path`` forms, And / Or / Not."""

from __future__ import annotations

import fnmatch
from typing import Any

from keel.workflows import paths

_NUM = (int, float)


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _cmp(op: str, a: Any, b: Any) -> bool:
    kind, rel = "", op
    for prefix in ("String", "Numeric", "Boolean", "Timestamp"):
        if op.startswith(prefix):
            kind, rel = prefix, op[len(prefix):]
    if kind == "Boolean":
        return isinstance(a, bool) and a == b
    if kind == "Numeric" and not (_is_num(a) and _is_num(b)):
        return False
    if kind in ("String", "Timestamp") and not (isinstance(a, str) and isinstance(b, str)):
        return False
    if rel == "Matches":
        return fnmatch.fnmatchcase(a, b)
    return bool({"Equals": a == b, "LessThan": a < b, "GreaterThan": a > b,
            "LessThanEquals": a <= b, "GreaterThanEquals": a >= b}[rel])


COMPARATORS = {f"{k}{r}" for k in ("String", "Numeric", "Timestamp")
               for r in ("Equals", "LessThan", "GreaterThan", "LessThanEquals",
                         "GreaterThanEquals")} | {"BooleanEquals", "StringMatches"}
TYPE_TESTS = {"IsPresent", "IsNull", "IsString", "IsNumeric", "IsBoolean"}


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
                   "IsBoolean": isinstance(var, bool)}[test]
            return got == want
    if var is paths.MISSING:
        return False
    for op in COMPARATORS:
        if op in rule:
            return _cmp(op, var, rule[op])
        if op + "Path" in rule:
            other = paths.get(rule[op + "Path"], data)
            return other is not paths.MISSING and _cmp(op, var, other)
    raise ValueError(f"choice rule has no supported comparator: {sorted(rule)}")
