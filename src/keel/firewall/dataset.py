"""The prompt-injection evaluation data in ``datasets/prompt_injection/`` as labelled rows.

Labels: ``jailbreak`` and ``prompt_injection`` are attacks; ``benign`` is benign;
``unsafe_direct`` (plainly harmful requests without any injection wrapper) is neither and is
reported on its own. The train/test split is deterministic: a row goes to ``test`` when the
first byte of ``sha1(key)`` is odd, where the key is the row id, or, for Tensor Trust, the
whitespace/case-normalised attack text, so an attack repeated against several defences
never lands on both sides. Tensor Trust duplicates are dropped (first row kept).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypedDict

from keel.errors import ConfigError

ATTACK_LABELS = frozenset({"jailbreak", "prompt_injection"})
BENIGN_LABEL = "benign"
NEUTRAL_LABEL = "unsafe_direct"
DEFAULT_DIR = Path("/work/shared/datasets/prompt_injection")
Split = Literal["train", "test", "all"]


class Row(TypedDict):
    id: str
    text: str
    label: str
    category: str


def is_attack(row: Row) -> bool:
    return row["label"] in ATTACK_LABELS


def split_of(key: str) -> Literal["train", "test"]:
    return "test" if hashlib.sha1(key.encode("utf-8")).digest()[0] & 1 else "train"


def _text_key(text: str) -> str:
    return " ".join(text.split()).lower()


def _read(path: Path) -> Iterator[dict[str, object]]:
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist; point --data at the dataset folder") from None


def load_rows(directory: Path = DEFAULT_DIR, split: Split = "all") -> list[Row]:
    """``prompts.jsonl`` and ``tensor_trust_attacks.jsonl`` as rows of one split."""
    rows: list[Row] = []
    for raw in _read(directory / "prompts.jsonl"):
        row = Row(id=str(raw["id"]), text=str(raw["text"]), label=str(raw["label"]),
                  category=str(raw["category"]))
        if split == "all" or split_of(row["id"]) == split:
            rows.append(row)
    seen: set[str] = set()
    for raw in _read(directory / "tensor_trust_attacks.jsonl"):
        text = str(raw["text"])
        key = _text_key(text)
        if key in seen:
            continue
        seen.add(key)
        if split == "all" or split_of(key) == split:
            rows.append(Row(id=str(raw["id"]), text=text, label=str(raw["label"]),
                            category=f"tensor_trust_{raw.get('kind', 'attack')}"))
    return rows
