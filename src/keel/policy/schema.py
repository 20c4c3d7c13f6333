"""Cedar schema generated from the tools' input JSON schemas.

Each tool is an action ``Action::"<tool>"`` that applies to principal ``Agent`` and resource
``Tool``. The action's context record holds the tool's arguments (mapped from JSON schema:
integer -> Long, number -> decimal, string -> String, boolean -> Boolean, array -> Set,
object -> Record;
arguments listed in ``required`` are required, the rest optional so policies test them with
``has``; ``X | null`` -- ``anyOf``/``oneOf`` with a null branch or ``"type": [X, "null"]`` --
is an optional X whose null value is handed to Cedar as "absent"; local ``$ref``s are
resolved), plus two reserved records:

- ``context.now``: ``hour`` (0-23), ``minute``, ``weekday`` (1 = Monday .. 7 = Sunday),
  ``day`` (day of month), ``month``, ``year`` and ``epoch`` (unix seconds), in the configured
  time zone;
- ``context.session``: ``id`` and ``spend_cents`` (integer cents).

Money: a JSON ``number`` argument (``{"amount": 49.99}``) is a Cedar ``decimal``
(``context.amount > decimal("50.00")``, see :mod:`keel.policy.decimals`); a value with more
than 4 digits after the point or out of range is denied. The alternative, chosen per tool
schema, is integer minor units: declare ``"amount_cents": {"type": "integer"}`` and it is a
Long (``context.amount_cents > 5000``).

An argument Cedar cannot type (``int | str``, a typeless field, an array of nulls, a
remote ``$ref``) is left out of the schema, and a call that sends it is denied
(:func:`untyped_arguments`): no policy could see its value, so it must not reach the tool.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import cedarpy

from keel.errors import ConfigError
from keel.policy.decimals import DECIMAL_TYPE

RESERVED = ("now", "session")

NOW_TYPE: dict[str, Any] = {
    "type": "Record",
    "attributes": {k: {"type": "Long"} for k in
                   ("hour", "minute", "weekday", "day", "month", "year", "epoch")},
}
SESSION_TYPE: dict[str, Any] = {
    "type": "Record",
    "attributes": {"id": {"type": "String"}, "spend_cents": {"type": "Long"}},
}
AGENT_SHAPE: dict[str, Any] = {
    "type": "Record",
    "attributes": {"tenant": {"type": "String"}, "name": {"type": "String"},
                   "roles": {"type": "Set", "element": {"type": "String"}}},
}
TOOL_SHAPE: dict[str, Any] = {
    "type": "Record", "attributes": {"server": {"type": "String"}},
}


@dataclass(frozen=True)
class ToolSignature:
    """What the schema needs to know about one tool."""

    name: str
    server: str
    input_schema: dict[str, Any]


# keywords that only annotate a node; anything else next to a ``$ref`` changes its meaning
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated",
                          "readOnly", "writeOnly", "$comment"})
_MAX_REF_DEPTH = 32


@dataclass(frozen=True)
class _Typed:
    """A JSON schema node as Cedar sees it: its type (None: Cedar cannot type it), whether
    JSON ``null`` is allowed (null then means "absent"), and where nested nulls may sit."""

    ctype: dict[str, Any] | None
    nullable: bool = False
    nulls: Any = None  # see :func:`drop_nulls`


_UNTYPED = _Typed(None)


def _pointer(root: Any, ref: str) -> Any:
    """The node a local ``$ref`` (``#/$defs/Name``, ``#/definitions/Name``) points at."""
    if not ref.startswith("#/"):
        return None  # remote or relative references are never fetched
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _typed(js: Any, root: Any, seen: frozenset[str] = frozenset()) -> _Typed:
    if not isinstance(js, dict) or len(seen) > _MAX_REF_DEPTH:
        return _UNTYPED
    ref = js.get("$ref")
    if ref is not None:
        if not isinstance(ref, str) or ref in seen or set(js) - _ANNOTATIONS - {"$ref"}:
            return _UNTYPED  # a cycle, or keywords we would have to merge: not typed
        return _typed(_pointer(root, ref), root, seen | {ref})
    for combinator in ("anyOf", "oneOf"):
        if combinator in js:  # Optional[X]: [X, null] -> X, and null means absent
            branches = js[combinator]
            if "type" in js or not isinstance(branches, list):
                return _UNTYPED
            typed = [_typed(b, root, seen) for b in branches if not _is_null(b, root)]
            if len(typed) != 1 or typed[0].ctype is None:
                return _UNTYPED
            return _Typed(typed[0].ctype, typed[0].nullable or len(typed) < len(branches),
                          typed[0].nulls)
    if "allOf" in js:  # a lone allOf wraps a $ref (older pydantic)
        parts = js["allOf"]
        if "type" in js or not isinstance(parts, list) or len(parts) != 1:
            return _UNTYPED
        return _typed(parts[0], root, seen)
    t = js.get("type")
    nullable = False
    if isinstance(t, list):  # ["integer", "null"] -> an optional Long
        non_null = [x for x in t if x != "null"]
        nullable = len(non_null) < len(t)
        t = non_null[0] if len(non_null) == 1 else None
    elif t is None:
        t, nullable = _enum_type(js)
    if t == "integer":
        return _Typed({"type": "Long"}, nullable)
    if t == "number":
        return _Typed(dict(DECIMAL_TYPE), nullable)
    if t == "string":
        return _Typed({"type": "String"}, nullable)
    if t == "boolean":
        return _Typed({"type": "Boolean"}, nullable)
    if t == "array":
        element = _typed(js.get("items"), root, seen)
        if element.ctype is None or element.nullable:  # a Set cannot hold nulls
            return _UNTYPED
        return _Typed({"type": "Set", "element": element.ctype}, nullable,
                      ("set", element.nulls) if element.nulls is not None else None)
    if t == "object":
        record, nulls = _record(js, root, seen)
        return _Typed(record, nullable, nulls)
    return _UNTYPED


def _is_null(js: Any, root: Any) -> bool:
    if isinstance(js, dict) and isinstance(js.get("$ref"), str):
        js = _pointer(root, js["$ref"])
    return isinstance(js, dict) and js.get("type") == "null"


def _enum_type(js: dict[str, Any]) -> tuple[str | None, bool]:
    """The JSON type of an ``enum``/``const`` node without ``type`` (one type only)."""
    values = js["enum"] if isinstance(js.get("enum"), list) else \
        [js["const"]] if "const" in js else []
    kinds = {"boolean" if isinstance(v, bool) else "integer" if isinstance(v, int) else
             "string" if isinstance(v, str) else "null" if v is None else "other"
             for v in values}
    nullable = "null" in kinds
    kinds.discard("null")
    return (kinds.pop() if len(kinds) == 1 and "other" not in kinds else None), nullable


def _record(js: dict[str, Any], root: Any, seen: frozenset[str]
            ) -> tuple[dict[str, Any], dict[str, tuple[bool, Any]] | None]:
    props = js.get("properties") or {}
    required = set(js.get("required") or [])
    attrs: dict[str, Any] = {}
    nulls: dict[str, tuple[bool, Any]] = {}
    for name, sub in props.items():
        typed = _typed(sub, root, seen)
        if typed.ctype is None:
            continue
        # a nullable argument may be left out (null = absent), so it is never required
        attrs[name] = {**typed.ctype, "required": name in required and not typed.nullable}
        if typed.nullable or typed.nulls is not None:
            nulls[name] = (typed.nullable, typed.nulls)
    return {"type": "Record", "attributes": attrs}, nulls or None


def cedar_type(js: Any) -> dict[str, Any] | None:
    """The Cedar type for a JSON schema node, or None when Cedar cannot represent it."""
    return _typed(js, js).ctype


def record_type(js: dict[str, Any]) -> dict[str, Any]:
    """The Cedar record for an object schema (local ``$ref``s resolve against ``js``)."""
    return _record(js, js, frozenset())[0]


def argument_names(input_schema: dict[str, Any]) -> frozenset[str]:
    """The top-level arguments that appear in the Cedar context."""
    return frozenset(record_type(input_schema)["attributes"])


def untyped_arguments(input_schema: dict[str, Any]) -> frozenset[str]:
    """Declared top-level arguments Cedar cannot type (e.g. ``int | str``, a typeless
    field): a call that sends one is denied, since no policy could see its value."""
    return frozenset(input_schema.get("properties") or {}) - argument_names(input_schema)


def null_shape(input_schema: dict[str, Any]) -> Any:
    """Where JSON nulls mean "absent" in a tool's arguments (for :func:`drop_nulls`)."""
    return _record(input_schema, input_schema, frozenset())[1]


def drop_nulls(shape: Any, value: Any) -> Any:
    """``value`` without the nulls ``shape`` allows (record attributes whose schema says
    ``X | null``): Cedar has no null, and a policy sees such an argument as absent. Any
    other null stays and Cedar refuses it."""
    if shape is None:
        return value
    if isinstance(shape, tuple) and isinstance(value, list):
        return [drop_nulls(shape[1], v) for v in value]
    if isinstance(shape, dict) and isinstance(value, dict):
        out = {}
        for k, v in value.items():
            nullable, inner = shape.get(k, (False, None))
            if v is None and nullable:
                continue
            out[k] = drop_nulls(inner, v)
        return out
    return value


def schema_json(tools: Iterable[ToolSignature]) -> dict[str, Any]:
    """The Cedar schema (JSON form) for a set of tools."""
    actions: dict[str, Any] = {}
    for tool in tools:
        ctx = record_type(tool.input_schema)
        clash = [r for r in RESERVED if r in ctx["attributes"]]
        if clash:
            raise ConfigError(
                f"tool {tool.name!r} has an argument named {clash[0]!r}, which is reserved "
                "for the Cedar context (context.now, context.session); rename the argument"
            )
        ctx["attributes"]["now"] = {"type": "Now"}
        ctx["attributes"]["session"] = {"type": "Session"}
        actions[tool.name] = {"appliesTo": {"principalTypes": ["Agent"],
                                            "resourceTypes": ["Tool"], "context": ctx}}
    return {"": {
        "commonTypes": {"Now": NOW_TYPE, "Session": SESSION_TYPE},
        "entityTypes": {"Agent": {"shape": AGENT_SHAPE}, "Tool": {"shape": TOOL_SHAPE}},
        "actions": actions,
    }}


def build_schema(tools: Iterable[ToolSignature]) -> tuple[cedarpy.Schema, str]:
    """Parse the generated schema once; also return its Cedar text (for humans and drafts)."""
    raw = json.dumps(schema_json(tools))
    try:
        schema = cedarpy.Schema.from_json_str(raw)
    except ValueError as exc:
        raise ConfigError(f"the generated Cedar schema does not parse: {exc}") from None
    return schema, str(schema)
