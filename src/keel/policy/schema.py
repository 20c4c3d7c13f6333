"""Cedar schema generated from the tools' input JSON schemas.

Each tool is an action ``Action::"<tool>"`` that applies to principal ``Agent`` and resource
``Tool``. The action's context record holds the tool's arguments (mapped from JSON schema:
integer -> Long, number -> decimal, string -> String, boolean -> Boolean, array -> Set,
object -> Record;
arguments listed in ``required`` are required, the rest optional so policies test them with
``has``), plus two reserved records:

- ``context.now``: ``hour`` (0-23), ``minute``, ``weekday`` (1 = Monday .. 7 = Sunday),
  ``day`` (day of month), ``month``, ``year`` and ``epoch`` (unix seconds), in the configured
  time zone;
- ``context.session``: ``id`` and ``spend_cents`` (integer cents).

Money: a JSON ``number`` argument (``{"amount": 49.99}``) is a Cedar ``decimal``
(``context.amount > decimal("50.00")``, see :mod:`keel.policy.decimals`); a value with more
than 4 digits after the point or out of range is denied. The alternative, chosen per tool
schema, is integer minor units: declare ``"amount_cents": {"type": "integer"}`` and it is a
Long (``context.amount_cents > 5000``).
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


def cedar_type(js: Any) -> dict[str, Any] | None:
    """The Cedar type for a JSON schema node, or None when Cedar cannot represent it."""
    if not isinstance(js, dict):
        return None
    t = js.get("type")
    if isinstance(t, list):  # ["integer", "null"] -> the non-null type
        non_null = [x for x in t if x != "null"]
        t = non_null[0] if len(non_null) == 1 else None
    if t == "integer":
        return {"type": "Long"}
    if t == "number":
        return dict(DECIMAL_TYPE)
    if t == "string":
        return {"type": "String"}
    if t == "boolean":
        return {"type": "Boolean"}
    if t == "array":
        element = cedar_type(js.get("items"))
        return {"type": "Set", "element": element} if element else None
    if t == "object":
        return record_type(js)
    return None


def record_type(js: dict[str, Any]) -> dict[str, Any]:
    props = js.get("properties") or {}
    required = set(js.get("required") or [])
    attrs: dict[str, Any] = {}
    for name, sub in props.items():
        ct = cedar_type(sub)
        if ct is None:
            continue
        attrs[name] = {**ct, "required": name in required}
    return {"type": "Record", "attributes": attrs}


def argument_names(input_schema: dict[str, Any]) -> frozenset[str]:
    """The top-level arguments that appear in the Cedar context."""
    return frozenset(record_type(input_schema)["attributes"])


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
