"""Load and check an ASL state machine before anything runs (clear 4xx errors).

Checked at load, recursively into Parallel branches and Map processors: state types and
required fields, every transition target, unreachable states, loops no path leaves,
JSONPath and intrinsic-function syntax, Retry/Catch shape, and that every Task's
resource names a handler that exists (see :mod:`keel.workflows.resources`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from keel.errors import InvalidRequest
from keel.workflows import choice, paths
from keel.workflows.resources import TASK_TOKEN, resolve_resource

TYPES = {"Task", "Choice", "Pass", "Wait", "Succeed", "Fail", "Map", "Parallel"}
HandlerCheck = Callable[[str, str], str | None]  # (kind, target) -> problem or None


def _edges(st: dict[str, Any]) -> list[str]:
    out = [st.get("Next"), st.get("Default")]
    out += [c.get("Next") for c in st.get("Choices", []) if isinstance(c, dict)]
    out += [c.get("Next") for c in st.get("Catch", []) if isinstance(c, dict)]
    return [t for t in out if isinstance(t, str)]


def _terminal(st: dict[str, Any]) -> bool:
    return st["Type"] in ("Succeed", "Fail") or st.get("End") is True


def _error_rules(st: dict[str, Any], field: str, where: str) -> None:
    rules = st.get(field, [])
    if not isinstance(rules, list):
        raise InvalidRequest(f"{where}: {field} must be a list")
    for i, r in enumerate(rules):
        w = f"{where}.{field}[{i}]"
        names = r.get("ErrorEquals") if isinstance(r, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str)
                                                                for n in names):
            raise InvalidRequest(f"{w}: ErrorEquals must be a non-empty list of error names")
        if "States.ALL" in names and (len(names) != 1 or i != len(rules) - 1):
            raise InvalidRequest(f"{w}: States.ALL must appear alone in the last rule")
        if field == "Catch":
            if not isinstance(r.get("Next"), str):
                raise InvalidRequest(f"{w}: a Catch rule needs Next")
            paths.check(r.get("ResultPath", "$"), f"{w}.ResultPath")
        else:
            for k in ("IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds"):
                v = r.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                      or v < 0):
                    raise InvalidRequest(f"{w}: {k} must be a non-negative number")


def _seconds(st: dict[str, Any], key: str, where: str) -> None:
    v = st.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
        raise InvalidRequest(f"{where}: {key} must be a positive number of seconds")


def _state(name: str, st: Any, states: dict[str, Any], where: str,
           handlers: HandlerCheck | None) -> None:
    w = f"{where}state {name!r}"
    if not isinstance(st, dict) or st.get("Type") not in TYPES:
        raise InvalidRequest(f"{w}: Type must be one of {sorted(TYPES)}")
    kind = st["Type"]
    for t in _edges(st):
        if t not in states:
            raise InvalidRequest(f"{w}: transition to {t!r}, which is not a state")
    if kind not in ("Succeed", "Fail", "Choice"):
        if st.get("End") is not True and "Next" not in st:
            raise InvalidRequest(f"{w}: needs Next or End: true")
        if st.get("End") is True and "Next" in st:
            raise InvalidRequest(f"{w}: has both Next and End")
    for key in ("InputPath", "OutputPath", "ResultPath", "ItemsPath"):
        if key in st:
            paths.check(st[key], f"{w}.{key}")
    for key in ("Parameters", "ResultSelector", "ItemSelector"):
        if key in st:
            paths.check_template(st[key], f"{w}.{key}")
    _error_rules(st, "Retry", w)
    _error_rules(st, "Catch", w)
    _seconds(st, "TimeoutSeconds", w)
    _seconds(st, "HeartbeatSeconds", w)
    if kind == "Task":
        if not isinstance(st.get("Resource"), str):
            raise InvalidRequest(f"{w}: Task needs a Resource")
        res = resolve_resource(st, w)
        if handlers is not None:
            problem = handlers(res.kind, res.target)
            if problem:
                raise InvalidRequest(f"{w}: {problem}")
        if (st.get("HeartbeatSeconds") and st.get("TimeoutSeconds")
                and st["HeartbeatSeconds"] >= st["TimeoutSeconds"]):
            raise InvalidRequest(f"{w}: HeartbeatSeconds must be less than TimeoutSeconds")
    elif kind == "Choice":
        rules = st.get("Choices")
        if not isinstance(rules, list) or not rules:
            raise InvalidRequest(f"{w}: Choice needs a non-empty Choices list")
        for i, r in enumerate(rules):
            choice.check(r, f"{w}.Choices[{i}]")
    elif kind == "Wait":
        given = [k for k in ("Seconds", "SecondsPath", "Timestamp", "TimestampPath") if k in st]
        if len(given) != 1:
            raise InvalidRequest(f"{w}: Wait needs exactly one of Seconds, SecondsPath, "
                                 "Timestamp, TimestampPath")
        for k in ("SecondsPath", "TimestampPath"):
            if k in st:
                paths.check(st[k], f"{w}.{k}", nullable=False)
    elif kind == "Parallel":
        branches = st.get("Branches")
        if not isinstance(branches, list) or not branches:
            raise InvalidRequest(f"{w}: Parallel needs a non-empty Branches list")
        for i, b in enumerate(branches):
            check(b, handlers, where=f"{w}.Branches[{i}]: ")
    elif kind == "Map":
        proc = st.get("ItemProcessor", st.get("Iterator"))
        if proc is None:
            raise InvalidRequest(f"{w}: Map needs an ItemProcessor (or Iterator)")
        mode = ((proc.get("ProcessorConfig") or {}).get("Mode", "INLINE")
                if isinstance(proc, dict) else "INLINE")
        if mode not in ("INLINE", "DISTRIBUTED"):
            raise InvalidRequest(f"{w}: ProcessorConfig.Mode must be INLINE or DISTRIBUTED")
        for key in ("ItemReader", "ResultWriter", "ItemBatcher"):
            if key in st:
                raise InvalidRequest(f"{w}: {key} is not supported: pass the items in the "
                                     "input (ItemsPath)")
        mc = st.get("MaxConcurrency", 0)
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 0:
            raise InvalidRequest(f"{w}: MaxConcurrency must be an integer >= 0 (0: no limit)")
        check(proc, handlers, where=f"{w}.ItemProcessor: ")


def _flow(states: dict[str, Any], start: str, where: str) -> None:
    """Every state reachable from StartAt, and every reachable state able to finish."""
    seen, todo = {start}, [start]
    while todo:
        for t in _edges(states[todo.pop()]):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    lost = sorted(set(states) - seen)
    if lost:
        raise InvalidRequest(f"{where}state(s) {', '.join(map(repr, lost))} cannot be reached "
                             "from StartAt: remove them or add a transition")
    back: dict[str, set[str]] = {n: set() for n in states}
    for n, st in states.items():
        for t in _edges(st):
            back[t].add(n)
    ends = {n for n, st in states.items() if _terminal(st)}
    can_end, todo = set(ends), list(ends)
    while todo:
        for p in back[todo.pop()]:
            if p not in can_end:
                can_end.add(p)
                todo.append(p)
    stuck = sorted(seen - can_end)
    if stuck:
        raise InvalidRequest(f"{where}state(s) {', '.join(map(repr, stuck))} loop forever: no "
                             "path from them reaches End, Succeed or Fail")


def check(defn: Any, handlers: HandlerCheck | None = None, *, where: str = ""
          ) -> dict[str, Any]:
    if not isinstance(defn, dict) or not isinstance(defn.get("States"), dict) \
            or not defn["States"]:
        raise InvalidRequest(f"{where}an ASL definition is an object with StartAt and States")
    states: dict[str, Any] = defn["States"]
    if defn.get("StartAt") not in states:
        raise InvalidRequest(f"{where}StartAt {defn.get('StartAt')!r} is not a state")
    if defn.get("QueryLanguage", "JSONPath") != "JSONPath":
        raise InvalidRequest(f"{where}only QueryLanguage JSONPath is supported")
    _seconds(defn, "TimeoutSeconds", where.rstrip(": ") or "the state machine")
    for name, st in states.items():
        _state(name, st, states, where, handlers)
    _flow(states, defn["StartAt"], where)
    return defn


def parse(raw: bytes, handlers: HandlerCheck | None = None, *, source: str = "the body"
          ) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{source} is not valid JSON: {exc}") from None
    return check(data, handlers)


def load(path: Path, handlers: HandlerCheck | None = None) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidRequest(f"{path} does not exist") from None
    return parse(raw, handlers, source=str(path))


__all__ = ["TASK_TOKEN", "check", "load", "parse"]
