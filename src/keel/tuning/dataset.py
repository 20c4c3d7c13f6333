"""Feedback -> a versioned chat-format dataset: train / eval / regression splits.

* A trainable row is the prompt exactly as the model saw it (the logged request body: the
  system prompt and any RAG context included) plus the user's correction as the
  assistant's answer. Thumbs-up answers become the regression set: what the serving model
  already gets right must stay right.
* Every text goes through the shared PII sanitizer before it is written anywhere.
* Duplicates (same prompt, same correction) collapse to one row.
* The train/eval split is by prompt cluster: rows whose prompts share most of their words
  (the same question reworded a little, asked again with a typo) land on the same side, so
  a near-copy of a training prompt never counts as held-out. Questions worded differently
  about the same fact may fall on both sides: that is the generalisation the held-out
  split measures.
* The dataset's id is the SHA-256 of its content, so the same feedback always builds the
  same version and a changed one never overwrites it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from keel.errors import InvalidRequest

JSON = dict[str, Any]
_WORD = re.compile(r"[a-z0-9]+")


class SanitizeResult(Protocol):
    text: str


class Scrubber(Protocol):
    """The shared PII sanitizer (``keel.sanitize.Sanitizer``) as this module uses it."""

    def sanitize(self, text: str) -> SanitizeResult: ...


@dataclass(frozen=True)
class Example:
    messages: list[JSON]  # the prompt as the model saw it
    answer: str  # what it should say (a correction, or an approved answer)

    def row(self) -> JSON:
        return {"messages": [*self.messages, {"role": "assistant", "content": self.answer}]}


@dataclass
class Dataset:
    train: list[Example]
    eval: list[Example]
    regression: list[Example] = field(default_factory=list)
    scrubbed: int = 0  # PII entities replaced
    duplicates: int = 0
    pii_answers: int = 0  # rows left out: their answer itself held PII

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for name, part in (("train", self.train), ("eval", self.eval),
                           ("regression", self.regression)):
            h.update(name.encode())
            for ex in part:
                h.update(orjson.dumps(ex.row(), option=orjson.OPT_SORT_KEYS))
        return h.hexdigest()

    def write(self, root: Path) -> Path:
        """Write ``<root>/<hash>/{train,eval,regression}.jsonl`` + ``meta.json``; an existing
        directory of the same hash is the same dataset and is left as it is."""
        out = root / self.hash
        if (out / "meta.json").is_file():
            return out
        tmp = root / f".{self.hash}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", self.train), ("eval", self.eval),
                           ("regression", self.regression)):
            (tmp / f"{name}.jsonl").write_bytes(
                b"".join(orjson.dumps(ex.row()) + b"\n" for ex in part))
        (tmp / "meta.json").write_bytes(orjson.dumps(
            {"hash": self.hash, "train": len(self.train), "eval": len(self.eval),
             "regression": len(self.regression), "scrubbed_entities": self.scrubbed,
             "duplicates_dropped": self.duplicates,
             "pii_answers_dropped": self.pii_answers}, option=orjson.OPT_INDENT_2))
        tmp.rename(out)
        return out


def read_split(path: Path) -> list[Example]:
    """One ``*.jsonl`` split back into examples (the last message is the answer)."""
    out: list[Example] = []
    if not path.is_file():
        return out
    for i, line in enumerate(path.read_bytes().splitlines()):
        if not line.strip():
            continue
        row = orjson.loads(line)
        msgs = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
            raise InvalidRequest(f"{path} line {i + 1}: a row is {{\"messages\": [...]}} "
                                 "ending with the assistant's answer")
        out.append(Example(msgs[:-1], str(msgs[-1].get("content") or "")))
    return out


def prompt_messages(request_body: str | None, route: str) -> list[JSON] | None:
    """The messages a logged request sent, or ``None`` when it cannot be replayed (a
    truncated body, a non-chat route)."""
    if not request_body:
        return None
    body = orjson.loads(request_body)
    if not isinstance(body, dict) or body.get("_keel_truncated"):
        return None
    if route == "completions" and isinstance(body.get("prompt"), str):
        return [{"role": "user", "content": body["prompt"]}]
    msgs = body.get("messages")
    if route != "chat" or not isinstance(msgs, list) or not msgs:
        return None
    return [{"role": m.get("role"), "content": _content(m.get("content"))}
            for m in msgs if isinstance(m, dict)]


def _content(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


class _Scrub:
    def __init__(self, scrubber: Scrubber) -> None:
        self.scrubber = scrubber
        self.entities = 0

    def __call__(self, text: str) -> str:
        return self._run(text)[0]

    def _run(self, text: str) -> tuple[str, int]:
        result = self.scrubber.sanitize(text)
        found = len(getattr(result, "entities", ()) or ())
        self.entities += found
        return result.text, found

    def example(self, ex: Example) -> Example | None:
        """The scrubbed example, or None when the answer itself held PII: trained on, the
        model would learn to answer with pseudonyms (``<PERSON_...>``) instead of facts,
        and an answer that is personal data is not something to teach a shared model."""
        answer, found = self._run(ex.answer)
        if found:
            return None
        return Example([{**m, "content": self(str(m.get("content") or ""))}
                        for m in ex.messages], answer)


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _last_user(ex: Example) -> str:
    for m in reversed(ex.messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def clusters(examples: Sequence[Example], *, overlap: float = 0.6,
             same: float = 0.9) -> list[list[int]]:
    """Groups of example indexes whose last user turns' word sets overlap by ``overlap``
    (Jaccard) or more with the same answer, or by ``same`` or more whatever the answers:
    templated questions about different things ("port of service alpha" / "... bravo",
    different answers) are different questions, not paraphrases."""
    parent = list(range(len(examples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    words = [_words(_last_user(ex)) for ex in examples]
    answers = [_norm(ex.answer) for ex in examples]
    for i in range(len(examples)):
        for j in range(i):
            a, b = words[i], words[j]
            if not (a and b):
                continue
            jac = len(a & b) / len(a | b)
            if jac >= same or (jac >= overlap and answers[i] == answers[j]):
                union(i, j)
    groups: dict[int, list[int]] = {}
    for i in range(len(examples)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _replay_split(approved: list[Example], fraction: float) -> tuple[list[Example],
                                                                      list[Example]]:
    """(train, regression): whole prompt clusters of approved answers, in an order fixed by
    their content; ``fraction`` of them are trained on so the model keeps answering what
    users liked (without them a small fact set taught the 270M model to answer every
    question with one of its facts), the rest stay held out as the regression set."""
    if fraction <= 0 or len(approved) < 2:
        return [], approved
    groups = sorted(clusters(approved), key=lambda g: hashlib.sha256(orjson.dumps(sorted(
        _norm(approved[i].answer) + "|" + _norm(_last_user(approved[i])) for i in g))
    ).hexdigest())
    want = round(fraction * len(approved))
    train_idx: set[int] = set()
    for g in groups[:-1]:  # at least one cluster stays in the regression set
        if len(train_idx) >= want:
            break
        train_idx.update(g)
    return ([ex for i, ex in enumerate(approved) if i in train_idx],
            [ex for i, ex in enumerate(approved) if i not in train_idx])


def build(corrections: Iterable[Example], approved: Iterable[Example], scrubber: Scrubber, *,
          eval_fraction: float = 0.2, min_rows: int = 8,
          replay_fraction: float = 0.0) -> Dataset:
    """Scrub, deduplicate and split. Too few rows to split is a clear error."""
    scrub = _Scrub(scrubber)
    seen: set[bytes] = set()
    rows: list[Example] = []
    dupes = pii = 0
    for raw in corrections:
        ex = scrub.example(raw)
        if ex is None:
            pii += 1
            continue
        key = orjson.dumps([[_norm(str(m.get("content"))) for m in ex.messages],
                            _norm(ex.answer)])
        if key in seen:
            dupes += 1
            continue
        seen.add(key)
        rows.append(ex)
    liked = [scrub.example(ex) for ex in approved]
    pii += sum(ex is None for ex in liked)
    replay, regression = _replay_split([ex for ex in liked if ex is not None],
                                       replay_fraction)
    groups = clusters(rows)
    if len(rows) < min_rows or len(groups) < 2:
        raise InvalidRequest(
            f"{len(rows)} distinct trainable corrections in {len(groups)} prompt cluster(s)"
            + (f" ({pii} more left out: their answer held personal data)" if pii else "")
            + ": "
            f"a dataset needs at least {min_rows} rows in 2 or more clusters to hold some "
            "out for evaluation; collect more corrections first")
    # whole clusters go to eval, in an order fixed by their content, until the fraction
    # is reached (at least one cluster each side)
    ordered = sorted(groups, key=lambda g: hashlib.sha256(
        orjson.dumps(sorted(_norm(rows[i].answer) + "|" + _norm(_last_user(rows[i]))
                            for i in g))).hexdigest())
    want = max(1, round(eval_fraction * len(rows)))
    eval_idx: set[int] = set()
    for g in ordered[:-1]:
        if len(eval_idx) >= want:
            break
        eval_idx.update(g)
    train = [ex for i, ex in enumerate(rows) if i not in eval_idx] + replay
    held = [ex for i, ex in enumerate(rows) if i in eval_idx]
    return Dataset(train, held, regression, scrubbed=scrub.entities, duplicates=dupes,
                   pii_answers=pii)
