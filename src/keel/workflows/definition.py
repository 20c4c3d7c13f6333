"""Load and check an ASL state machine before anything runs (clear 4xx-style errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from keel.errors import InvalidRequest

TYPES = {"Task", "Choice", "Pass", "Wait", "Succeed", "Fail"}
TASK_TOKEN = ".waitForTaskToken"


def handler_name(state: dict[str, Any]) -> str:
    """Lambda-style resource -> registered handler name."""
    res: str = state["Resource"].removesuffix(TASK_TOKEN)
    if res.startswith("arn:aws:states:::lambda:invoke"):
        fn = (state.get("Parameters") or {}).get("FunctionName")
        if not isinstance(fn, str):
            raise InvalidRequest("lambda:invoke tasks need Parameters.FunctionName")
        res = fn
    if res.startswith("arn:"):
        parts = res.split(":")
        # arn:aws:lambda:region:account:function:NAME[:alias]
        res = parts[6] if len(parts) > 6 and parts[5] == "function" else parts[-1]
    return res.removeprefix("keel:")


def check(defn: Any) -> dict[str, Any]:
    if not isinstance(defn, dict) or not isinstance(defn.get("States"), dict):
        raise InvalidRequest("an ASL definition is an object with StartAt and States")
    states: dict[str, Any] = defn["States"]
    if defn.get("StartAt") not in states:
        raise InvalidRequest(f"StartAt {defn.get('StartAt')!r} is not a state")
    for name, st in states.items():
        where = f"state {name!r}"
        if not isinstance(st, dict) or st.get("Type") not in TYPES:
            raise InvalidRequest(f"{where}: Type must be one of {sorted(TYPES)} "
                                 "(Map and Parallel are not supported)")
        targets = [st.get("Next"), st.get("Default")]
        targets += [c.get("Next") for c in st.get("Choices", []) + st.get("Catch", [])]
        for t in targets:
            if t is not None and t not in states:
                raise InvalidRequest(f"{where}: Next {t!r} is not a state")
        terminal = st["Type"] in ("Succeed", "Fail", "Choice") or st.get("End") is True
        if not terminal and "Next" not in st:
            raise InvalidRequest(f"{where}: needs Next or End: true")
        if st["Type"] == "Task":
            if not isinstance(st.get("Resource"), str):
                raise InvalidRequest(f"{where}: Task needs a Resource")
            handler_name(st)
        if st["Type"] == "Choice" and not st.get("Choices"):
            raise InvalidRequest(f"{where}: Choice needs Choices")
    return defn


def load(path: Path) -> dict[str, Any]:
    try:
        return check(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        raise InvalidRequest(f"{path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}") from None
