"""The JSONPath subset ASL uses (``$``, ``$.a.b``, ``$.a[0]``, ``$['k']``, ``$$.Task.Token``)
and the input/output processing built on it: InputPath, Parameters / ItemSelector /
ResultSelector (``.$`` keys and intrinsic functions), ResultPath and OutputPath.

A path that matches nothing at run time is ``States.Runtime`` (:class:`PathError`); a path
that cannot be parsed is refused when the definition is loaded (:func:`check`).
"""

from __future__ import annotations

import copy
import random
import re
from typing import Any

from keel.errors import InvalidRequest

_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")
MISSING = object()


class PathError(Exception):
    """``States.Runtime``: a path does not resolve or cannot be written."""


def _steps(path: str) -> list[str | int]:
    if not isinstance(path, str) or not path.startswith("$"):
        raise InvalidRequest(f"JSONPath {path!r} must start with $ (or $$ for the context)")
    root = "$$" if path.startswith("$$") else "$"
    rest = path[len(root):]
    out: list[str | int] = []
    pos = 0
    while pos < len(rest):
        m = _TOKEN.match(rest, pos)
        if m is None:
            raise InvalidRequest(f"unsupported JSONPath {path!r}: keel supports $, $.a.b, "
                                 "$.a[0] and $['a b'] (no wildcards, filters or ..)")
        if m.group(2) is not None:
            out.append(int(m.group(2)))
        else:
            out.append(next(g for g in (m.group(1), m.group(3), m.group(4)) if g is not None))
        pos = m.end()
    return out


def check(path: Any, where: str, *, nullable: bool = True) -> None:
    """Refuse a path that cannot be parsed (at load, with where it is)."""
    if path is None and nullable:
        return
    try:
        _steps(path)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc.message}") from None


def get(path: str, data: Any, context: Any = None) -> Any:
    node = context if path.startswith("$$") else data
    for step in _steps(path):
        found = (isinstance(node, list) and isinstance(step, int) and step < len(node)) or (
            isinstance(node, dict) and isinstance(step, str) and step in node)
        if found:
            node = node[step]
        else:
            return MISSING
    return node


def resolve(path: str, data: Any, context: Any = None) -> Any:
    v = get(path, data, context)
    if v is MISSING:
        raise PathError(f"Invalid path {path!r}: the path matched nothing in "
                        + ("the context object" if path.startswith("$$") else "the input"))
    return v


def parameters(template: Any, data: Any, context: Any, rng: random.Random | None = None
               ) -> Any:
    """Parameters / ItemSelector / ResultSelector: a key ending in ``.$`` takes the value of
    a path (``$...`` on ``data``, ``$$...`` on the context) or an intrinsic function."""
    from keel.workflows import intrinsics

    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for k, v in template.items():
            if k.endswith(".$") and isinstance(v, str):
                out[k[:-2]] = (intrinsics.evaluate(v, data, context, rng)
                               if v.startswith("States.") else resolve(v, data, context))
            else:
                out[k] = parameters(v, data, context, rng)
        return out
    if isinstance(template, list):
        return [parameters(v, data, context, rng) for v in template]
    return template


def check_template(template: Any, where: str) -> None:
    """Load-time check of every ``.$`` value in a Parameters-like template."""
    from keel.workflows import intrinsics

    if isinstance(template, dict):
        for k, v in template.items():
            if k.endswith(".$"):
                if not isinstance(v, str):
                    raise InvalidRequest(f"{where}: {k!r} must be a path or an intrinsic "
                                         "function (a string)")
                if v.startswith("States."):
                    intrinsics.check(v, f"{where}.{k}")
                else:
                    check(v, f"{where}.{k}", nullable=False)
            else:
                check_template(v, f"{where}.{k}")
    elif isinstance(template, list):
        for i, v in enumerate(template):
            check_template(v, f"{where}[{i}]")


def put(path: str | None, data: Any, result: Any) -> Any:
    """ResultPath: where the result goes in (a copy of) the state input; null discards it."""
    if path is None:
        return data
    steps = _steps(path)
    if path.startswith("$$"):
        raise PathError(f"ResultPath {path!r} cannot write to the context object")
    if not steps:
        return result
    if not isinstance(data, dict):
        raise PathError(f"ResultPath {path!r} needs an object as the state input, got "
                        f"{type(data).__name__}")
    root = copy.deepcopy(data)
    node = root
    for step in steps[:-1]:
        if not isinstance(step, str):
            raise PathError(f"ResultPath {path!r}: only object fields can be written")
        nxt = node.get(step)
        if nxt is None:
            nxt = {}
            node[step] = nxt
        if not isinstance(nxt, dict):
            raise PathError(f"ResultPath {path!r}: {step!r} is not an object")
        node = nxt
    last = steps[-1]
    if not isinstance(last, str):
        raise PathError(f"ResultPath {path!r}: only object fields can be written")
    node[last] = result
    return root


def select(path: str | None, data: Any, context: Any = None) -> Any:
    """InputPath / OutputPath: ``None`` (JSON null) means an empty object."""
    if path is None:
        return {}
    return resolve(path, data, context)
