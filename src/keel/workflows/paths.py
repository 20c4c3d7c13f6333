"""The JSONPath subset ASL uses: ``$``, ``$.a.b``, ``$.a[0]``, ``$$.Task.Token``; plus
InputPath / Parameters / ResultPath / OutputPath processing."""

from __future__ import annotations

import copy
import re
from typing import Any

from keel.errors import InvalidRequest

_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]|\['([^']*)'\]")
MISSING = object()


class PathError(Exception):
    """``States.Runtime``: a path does not resolve."""


def _steps(path: str) -> list[str | int]:
    root = "$$" if path.startswith("$$") else "$"
    rest = path[len(root):]
    out: list[str | int] = []
    pos = 0
    while pos < len(rest):
        m = _TOKEN.match(rest, pos)
        if m is None:
            raise InvalidRequest(f"unsupported JSONPath {path!r} (use $.a.b or $.a[0])")
        out.append(int(m.group(2)) if m.group(2) else (m.group(1) or m.group(3)))
        pos = m.end()
    return out


def get(path: str, data: Any, context: dict[str, Any] | None = None) -> Any:
    node = context if path.startswith("$$") else data
    for step in _steps(path):
        in_list = isinstance(step, int) and isinstance(node, list) and step < len(node)
        if in_list or (isinstance(step, str) and isinstance(node, dict) and step in node):
            node = node[step]  # type: ignore[index]
        else:
            return MISSING
    return node


def resolve(path: str, data: Any, context: dict[str, Any] | None = None) -> Any:
    v = get(path, data, context)
    if v is MISSING:
        raise PathError(f"path {path!r} matched nothing in the state input")
    return v


def parameters(template: Any, data: Any, context: dict[str, Any]) -> Any:
    """Parameters / ResultSelector: keys ending in ``.$`` take a path's value."""
    if isinstance(template, dict):
        out: dict[str, Any] = {}
        for k, v in template.items():
            if k.endswith(".$") and isinstance(v, str):
                out[k[:-2]] = resolve(v, data, context)
            else:
                out[k] = parameters(v, data, context)
        return out
    if isinstance(template, list):
        return [parameters(v, data, context) for v in template]
    return template


def put(path: str | None, data: Any, result: Any) -> Any:
    """ResultPath: where the result goes in (a copy of) the state input."""
    if path is None:
        return data
    steps = _steps(path)
    if not steps:
        return result
    root = copy.deepcopy(data) if isinstance(data, dict) else {}
    node = root
    for step in steps[:-1]:
        if not isinstance(step, str):
            raise PathError(f"ResultPath {path!r}: only object fields can be written")
        nxt = node.get(step)
        if not isinstance(nxt, dict):
            nxt = {}
            node[step] = nxt
        node = nxt
    last = steps[-1]
    if not isinstance(last, str):
        raise PathError(f"ResultPath {path!r}: only object fields can be written")
    node[last] = result
    return root


def select(path: str | None, data: Any) -> Any:
    """InputPath / OutputPath: ``None`` (JSON null) means an empty object."""
    if path is None:
        return {}
    return resolve(path, data)
