"""Score a block/allow predictor on labelled prompts, per category.

Attack categories report a detection rate (blocked / total); benign categories a
false-positive rate (blocked / total). ``unsafe_direct`` rows (harmful requests with no
injection wrapper) are neither and are counted on their own as ``neutral``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.errors import ConfigError
from keel.firewall.dataset import ATTACK_LABELS, BENIGN_LABEL, Row

Predict = Callable[[str], bool] | Callable[[str], Awaitable[bool]]

_ATTACK_VALUES = {"attack", "jailbreak", "prompt_injection", "injection", "1", "true"}
_BENIGN_VALUES = {"benign", "0", "false"}
_NEUTRAL_VALUES = {"unsafe_direct", "neutral"}


@dataclass
class CategoryCount:
    kind: str  # "attack" | "benign" | "neutral"
    total: int = 0
    blocked: int = 0

    @property
    def rate(self) -> float:
        return self.blocked / self.total if self.total else 0.0


@dataclass
class Report:
    categories: dict[str, CategoryCount] = field(default_factory=dict)

    def add(self, category: str, kind: str, blocked: bool) -> None:
        count = self.categories.setdefault(category, CategoryCount(kind))
        count.total += 1
        count.blocked += int(blocked)

    def _sum(self, kind: str) -> tuple[int, int]:
        cats = [c for c in self.categories.values() if c.kind == kind]
        return sum(c.blocked for c in cats), sum(c.total for c in cats)

    @property
    def detection_rate(self) -> float:
        blocked, total = self._sum("attack")
        return blocked / total if total else 0.0

    @property
    def false_positive_rate(self) -> float:
        blocked, total = self._sum("benign")
        return blocked / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind in ("attack", "benign", "neutral"):
            blocked, total = self._sum(kind)
            out[kind] = {"total": total, "blocked": blocked,
                         "rate": round(blocked / total, 4) if total else 0.0}
        out["detection_rate"] = round(self.detection_rate, 4)
        out["false_positive_rate"] = round(self.false_positive_rate, 4)
        out["categories"] = {
            name: {"kind": c.kind, "total": c.total, "blocked": c.blocked,
                   "rate": round(c.rate, 4)}
            for name, c in sorted(self.categories.items())
        }
        return out


def kind_of(label: str) -> str:
    if label in ATTACK_LABELS:
        return "attack"
    if label == BENIGN_LABEL:
        return "benign"
    return "neutral"


async def evaluate(predict: Predict, rows: Iterable[Row]) -> Report:
    """Run ``predict`` (True = blocked; sync or async) over ``rows``."""
    report = Report()
    for row in rows:
        result = predict(row["text"])
        blocked = bool(await result) if inspect.isawaitable(result) else bool(result)
        report.add(row["category"], kind_of(row["label"]), blocked)
    return report


def _label(value: Any, where: str) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int | str):
        text = str(value).strip().lower()
        if text in _ATTACK_VALUES:
            return "prompt_injection" if text != "jailbreak" else "jailbreak"
        if text in _BENIGN_VALUES:
            return BENIGN_LABEL
        if text in _NEUTRAL_VALUES:
            return "unsafe_direct"
    raise ConfigError(
        f"{where}: label {value!r} is not one of attack/jailbreak/prompt_injection/injection/"
        "1/true (attack) or benign/0/false (benign)"
    )


def read_jsonl_eval(path: str | Path) -> list[Row]:
    """Rows from a JSONL file with ``text`` and ``label`` (and optional ``category``, ``id``).

    Bad lines raise :class:`ConfigError` naming the line number.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    rows: list[Row] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: invalid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: each line must be a JSON object")
        text = obj.get("text")
        if not isinstance(text, str):
            raise ConfigError(f"{where}: 'text' must be a string")
        if "label" not in obj:
            raise ConfigError(f"{where}: 'label' is missing")
        label = _label(obj["label"], where)
        category = obj.get("category")
        if category is None:
            category = "attack" if label in ATTACK_LABELS else label
        rows.append(Row(id=str(obj.get("id", lineno)), text=text, label=label,
                        category=str(category)))
    if not rows:
        raise ConfigError(f"{p}: no rows")
    return rows
