"""Money in Cedar: JSON numbers with fractions as Cedar ``decimal`` values.

Cedar has no floats. A tool argument whose JSON schema type is ``number`` is typed
``decimal`` in the generated Cedar schema, and its value is handed to Cedar as the exact
decimal text of the JSON number (``49.99`` -> ``decimal("49.99")``), never through a binary
float. Cedar's ``decimal`` holds at most 4 digits after the point and
-922337203685477.5808 .. 922337203685477.5807; a value outside that does not fit, and the
call is denied (fail closed) rather than rounded.

Cedar compares decimals with methods (``.greaterThan``, ``.lessThanOrEqual`` ...); its
``<`` ``<=`` ``>`` ``>=`` operators take only Long, datetime and duration. So that
``context.amount > decimal("50.00")`` reads as written, keel rewrites a comparison one of
whose operands is a ``decimal("...")`` literal into the method call before Cedar parses and
validates the policy (:func:`compile_policy_text`); other decimal comparisons fail
validation with a hint naming the methods.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import cedarpy

DECIMAL_TYPE: dict[str, Any] = {"type": "Extension", "name": "decimal"}
MAX_FRACTION_DIGITS = 4
_LIMIT = Decimal(2**63) / 10**MAX_FRACTION_DIGITS  # 922337203685477.5808
_METHODS = {">": "greaterThan", ">=": "greaterThanOrEqual", "<": "lessThan",
            "<=": "lessThanOrEqual"}
HINT = ("decimal values (JSON numbers with fractions, e.g. context.amount) compare with "
        "`context.amount > decimal(\"50.00\")` (keel rewrites it) or Cedar's methods "
        "`.greaterThan(decimal(\"50.00\"))`, `.lessThanOrEqual(...)`; compare them with "
        "decimal(\"...\") literals, not integers")


class DecimalMisfit(ValueError):
    """A JSON number that Cedar's decimal cannot hold exactly."""


def cedar_decimal(value: Any, where: str) -> dict[str, Any]:
    """The Cedar JSON for ``value`` as a decimal; raises :class:`DecimalMisfit`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecimalMisfit(f"argument {where!r} must be a JSON number, not "
                            f"{type(value).__name__}")
    try:
        # repr() of a parsed JSON float is the shortest text that reads back as the same
        # float: 49.99 stays 49.99, where Decimal(49.99) would be 49.98999999999999...
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise DecimalMisfit(f"argument {where!r} = {value!r} is not a finite number") from None
    if not d.is_finite():
        raise DecimalMisfit(f"argument {where!r} = {value!r} is not a finite number")
    exponent = d.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > MAX_FRACTION_DIGITS:
        raise DecimalMisfit(
            f"argument {where!r} = {value!r} has more than {MAX_FRACTION_DIGITS} digits after "
            "the point, which Cedar's decimal cannot hold; round it (or send integer minor "
            "units, e.g. cents, with an integer schema type)")
    if not -_LIMIT <= d < _LIMIT:
        raise DecimalMisfit(f"argument {where!r} = {value!r} is outside Cedar's decimal range "
                            f"(+/-{_LIMIT})")
    text = f"{d.normalize():f}"
    return {"__extn": {"fn": "decimal", "arg": text if "." in text else text + ".0"}}


LONG = "long"
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def cedar_long(value: Any, where: str) -> int:
    """``value`` as a Cedar Long, or :class:`DecimalMisfit` with what to send instead
    (Cedar's own error for 100.5 or "100" names neither the argument nor the fix)."""
    if isinstance(value, bool) or not isinstance(value, int):
        shown = f"{value!r}"[:40]
        raise DecimalMisfit(f"argument {where!r} must be a whole number (an integer in the "
                            f"tool's schema), got {shown}")
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise DecimalMisfit(f"argument {where!r} = {value} is outside the range of Cedar's "
                            "Long (-2^63 .. 2^63-1)")
    return value


def decimal_shape(cedar_type: dict[str, Any]) -> Any:
    """Where decimals and Longs sit in a Cedar type: True (a decimal), ``LONG``, a dict of
    attribute shapes (a record with such inside), ``[shape]`` (a set of such), or None."""
    kind = cedar_type.get("type")
    if kind == "Extension" and cedar_type.get("name") == "decimal":
        return True
    if kind == "Long":
        return LONG
    if kind == "Set":
        inner = decimal_shape(cedar_type.get("element") or {})
        return [inner] if inner is not None else None
    if kind == "Record":
        attrs = {k: s for k, a in (cedar_type.get("attributes") or {}).items()
                 if (s := decimal_shape(a)) is not None}
        return attrs or None
    return None


def to_cedar(shape: Any, value: Any, where: str) -> Any:
    """``value`` with the numbers ``shape`` marks turned into Cedar decimals (anything else
    there raises :class:`DecimalMisfit`). Records and sets of the wrong kind are left
    alone: Cedar, which always gets the schema, refuses them."""
    if shape is True:  # only JSON numbers: Cedar would also read "49.99" as a decimal
        return cedar_decimal(value, where)
    if shape == LONG:
        return cedar_long(value, where)
    if isinstance(shape, list) and isinstance(value, list):
        return [to_cedar(shape[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(shape, dict) and isinstance(value, dict):
        return {k: to_cedar(shape[k], v, f"{where}.{k}") if k in shape else v
                for k, v in value.items()}
    return value


# -- policy text -----------------------------------------------------------------------------


def _is_decimal_literal(node: Any) -> bool:
    return isinstance(node, dict) and "decimal" in node and len(node) == 1


def _rewrite(node: Any) -> tuple[Any, bool]:
    """The JSON policy tree with decimal comparisons as method calls; and whether any was."""
    if isinstance(node, list):
        pairs = [_rewrite(x) for x in node]
        return [p[0] for p in pairs], any(p[1] for p in pairs)
    if not isinstance(node, dict):
        return node, False
    if len(node) == 1:
        (op, body), = node.items()
        if op in _METHODS and isinstance(body, dict) and set(body) == {"left", "right"}:
            left, lc = _rewrite(body["left"])
            right, rc = _rewrite(body["right"])
            if _is_decimal_literal(left) or _is_decimal_literal(right):
                return {_METHODS[op]: [left, right]}, True
            return {op: {"left": left, "right": right}}, lc or rc
    out, changed = {}, False
    for k, v in node.items():
        out[k], c = _rewrite(v)
        changed = changed or c
    return out, changed


_DECIMAL_CALL = re.compile(r"\bdecimal\s*\(")


def compile_policy_text(text: str) -> str:
    """``text`` with ``x > decimal("1.5")`` (and <, <=, >=) as Cedar decimal method calls.

    Returns ``text`` itself when there is nothing to rewrite (or it does not parse: the
    caller's parse then reports Cedar's own error). Policy order, ids and annotations are
    kept, so decisions name the same policies."""
    if not _DECIMAL_CALL.search(text):
        return text
    try:
        tree = json.loads(cedarpy.policies_to_json_str(text))
    except ValueError:
        return text
    tree, changed = _rewrite(tree)
    if not changed:
        return text
    return str(cedarpy.policies_from_json_str(json.dumps(tree)))


def explain(message: str) -> str:
    """Cedar's validation message, with the decimal hint when a decimal met an operator."""
    if "saw decimal" in message:
        return f"{message} ({HINT})"
    return message
