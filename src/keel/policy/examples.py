"""Example requests on both sides of each rule, for a human reviewing a drafted policy.

For every comparison of a context field with a literal (``context.amount_cents <= 5000``,
``context.now.hour >= 9``) the generator builds one request just inside and one just outside
the boundary, for each action the policy applies to, and asks the authorizer for its
decision. Fields the rules do not mention get plain defaults.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import cedarpy
from cedarpy import pst

from keel.policy.authorizer import Authorizer, AuthzDecision, PolicySnapshot
from keel.policy.schema import record_type

_OPS = ("less", "less_eq", "greater", "greater_eq", "eq", "not_eq")
_DEFAULT_NOW = {"hour": 12, "minute": 0, "weekday": 1, "day": 5, "month": 1, "year": 2026,
                "epoch": 1767614400}


@dataclass(frozen=True)
class Example:
    policy: str
    tool: str
    field: str
    value: Any
    context: dict[str, Any]
    decision: AuthzDecision


def _path(e: Any) -> tuple[str, ...] | None:
    parts: list[str] = []
    while isinstance(e, pst.GetAttr):
        parts.append(e.attr)
        e = e.base
    if isinstance(e, pst.Var) and e.name == "context" and parts:
        return tuple(reversed(parts))
    return None


def _literal(e: Any) -> Any:
    if isinstance(e, pst.LongLit | pst.StringLit | pst.BoolLit):
        return e.value
    if isinstance(e, pst.UnaryOp) and e.op == "decimal" and isinstance(e.arg, pst.StringLit):
        try:
            return Decimal(e.arg.value)
        except InvalidOperation:
            return None
    return None


def _cedar_value(v: Any) -> Any:
    """A value as Cedar JSON (decimals as extension values)."""
    if isinstance(v, Decimal):
        text = f"{v:f}"
        return {"__extn": {"fn": "decimal", "arg": text if "." in text else text + ".0"}}
    return v


def comparisons(e: Any) -> Iterator[tuple[tuple[str, ...], str, Any]]:
    """(context path, op, literal) for every simple comparison under ``e``."""
    if isinstance(e, pst.BinaryOp):
        if e.op in _OPS:
            for a, b in ((e.left, e.right), (e.right, e.left)):
                path, lit = _path(a), _literal(b)
                if path and lit is not None:
                    yield path, e.op, lit
        yield from comparisons(e.left)
        yield from comparisons(e.right)
    elif isinstance(e, pst.UnaryOp):
        yield from comparisons(e.arg)
    elif isinstance(e, pst.IfThenElse):
        for part in (e.cond, e.then_expr, e.else_expr):
            yield from comparisons(part)


def _sides(op: str, v: Any) -> list[Any]:
    if isinstance(v, bool):
        return [v, not v]
    if isinstance(v, Decimal):  # money: one cent either side
        c = Decimal("0.01")
        return {"less": [v - c, v], "less_eq": [v, v + c], "greater": [v + c, v],
                "greater_eq": [v, v - c]}.get(op, [v, v + c])
    if isinstance(v, int):
        return {"less": [v - 1, v], "less_eq": [v, v + 1], "greater": [v + 1, v],
                "greater_eq": [v, v - 1]}.get(op, [v, v + 1])
    return [v, f"{v}-other"]


def _default(t: dict[str, Any]) -> Any:
    kind = t.get("type")
    if kind == "Long":
        return 1
    if kind == "Boolean":
        return False
    if kind == "Set":
        return []
    if kind == "Extension":  # decimal (money)
        return {"__extn": {"fn": "decimal", "arg": "0.0"}}
    if kind == "Record":
        return {k: _default(a) for k, a in t["attributes"].items() if a.get("required")}
    return "example"


def _actions(node: Any, tools: list[str]) -> list[str]:
    a = node.action
    if isinstance(a, pst.ActionEq):
        return [a.entity.id]
    if isinstance(a, pst.ActionIn):
        return [x.id for x in a.entities]
    return tools


def examples(authorizer: Authorizer, snap: PolicySnapshot, *, agent: str = "agent",
             tenant: str = "default", limit: int = 40) -> list[Example]:
    out: list[Example] = []
    tree = cedarpy.policies_to_pst(snap.text)
    names = list(authorizer.tools)
    for pid, node in tree.static_policies.items():
        label = snap.labels.get(pid, pid)
        for tool in _actions(node, names):
            sig = authorizer.tools.get(tool)
            if sig is None:
                continue
            ctx_type = record_type(sig.input_schema)
            base = _default(ctx_type)
            base["now"] = dict(_DEFAULT_NOW)
            base["session"] = {"id": "review", "spend_cents": 0}
            for clause in node.clauses:
                for path, op, lit in comparisons(clause.expr):
                    top = path[0]
                    if top not in ctx_type["attributes"] and top not in ("now", "session"):
                        continue
                    for value in _sides(op, lit):
                        ctx = {k: (dict(v) if isinstance(v, dict) else v)
                               for k, v in base.items()}
                        node_ref = ctx
                        for part in path[:-1]:
                            node_ref = node_ref.setdefault(part, {})
                        node_ref[path[-1]] = _cedar_value(value)
                        d = authorizer.decide(agent, tenant, tool, ctx, snap)
                        out.append(Example(label, tool, ".".join(path), value, ctx, d))
                        if len(out) >= limit:
                            return out
    return out
