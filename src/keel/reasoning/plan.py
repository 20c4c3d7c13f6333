"""The pure mechanics of a run: ids, shuffling, brackets, agreement, retries, budgets.

Nothing here calls a model or touches storage, so every rule is unit-tested on its own
and gives the same answer when a durable run is replayed after a crash (all randomness
is seeded by the run id).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from keel.errors import (
    BudgetExceeded,
    InvalidRequest,
    KeelError,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
)

_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: ids a judge copies right
# Tokens the judge prompt spends around each answer ("### Answer id xk3\n" and spacing).
ANSWER_FRAME_TOKENS = 8


def rng_for(run_id: str, purpose: str) -> random.Random:
    """A generator seeded by the run and what it is for: a replay draws the same numbers."""
    seed = hashlib.sha256(f"{run_id}:{purpose}".encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def anonymous_ids(count: int, run_id: str) -> list[str]:
    """``count`` distinct short random ids: the judge sees ids, never positions or models."""
    rng = rng_for(run_id, "ids")
    length = 3 if count <= 2000 else 4
    ids: list[str] = []
    seen: set[str] = set()
    letters = _ID_ALPHABET[:23]
    while len(ids) < count:  # a letter first: never a number a judge could read as a rank
        cand = rng.choice(letters) + "".join(rng.choice(_ID_ALPHABET)
                                             for _ in range(length - 1))
        if cand not in seen:
            seen.add(cand)
            ids.append(cand)
    return ids


def shuffled(items: Sequence[str], run_id: str, purpose: str) -> list[str]:
    out = list(items)
    rng_for(run_id, purpose).shuffle(out)
    return out


# -- agreement -----------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Case, accents, punctuation and spacing removed: "Paris." == " paris " ."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", t)).strip()


def agree(texts: Sequence[str]) -> bool:
    """Whether all the answers say the same thing after :func:`normalise` (and are not
    empty)."""
    keys = {normalise(t) for t in texts}
    return len(keys) == 1 and "" not in keys


def majority(texts: Iterable[str]) -> tuple[str, int]:
    """The most common normalised answer and its count (ties: the first seen wins)."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        k = normalise(t)
        if not k:
            continue
        counts[k] += 1
        first.setdefault(k, i)
    if not counts:
        return "", 0
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return best, counts[best]


# -- retries -------------------------------------------------------------------------------

def retryable(exc: BaseException) -> bool:
    """429, 5xx and timeouts are worth another try; refusals and bad requests are not."""
    if isinstance(exc, UpstreamRejected | BudgetExceeded):
        return False
    if isinstance(exc, RateLimited | UpstreamError):
        return True
    if isinstance(exc, KeelError):
        return exc.http_status >= 500
    return isinstance(exc, TimeoutError | ConnectionError)


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random."""
    step = min(cap_s, base_s * 2.0 ** attempt)
    return step / 2 + rng.uniform(0, step / 2)


# -- judge context and brackets -------------------------------------------------------------

def estimate_tokens(text: str) -> int:
    """~4 characters per token, for text no model has counted yet (prompt templates)."""
    return max(1, (len(text) + 3) // 4) if text else 0


@dataclass(frozen=True)
class JudgeRoom:
    """How many answer tokens one judge call can take."""

    context: int  # the judge model's context (model table)
    max_tokens: int  # what the judge may write
    prompt_tokens: int  # instructions + the question

    @property
    def answers(self) -> int:
        return self.context - self.max_tokens - self.prompt_tokens

    def fits(self, sizes: Iterable[int]) -> bool:
        return sum(s + ANSWER_FRAME_TOKENS for s in sizes) <= self.answers

    def holds_one(self, size: int) -> bool:
        return size + ANSWER_FRAME_TOKENS <= self.answers


class BracketError(InvalidRequest):
    code = "reasoner_bracket"


def plan_round(sizes: dict[str, int], room: JudgeRoom, survivors: int,
               group_size: int = 0) -> list[list[str]]:
    """Groups for one tournament round over answers ``id -> tokens`` (in the given, already
    shuffled order). Each group fits one judge call and has more than ``survivors`` members,
    so every round shrinks the field; a lone trailing answer joins the last group when it
    fits, else it goes through unjudged (a group of one)."""
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for aid, size in sizes.items():
        cost = size + ANSWER_FRAME_TOKENS
        if not room.holds_one(size):
            raise BracketError(f"answer {aid} ({size} tokens) does not fit the judge context "
                               f"({room.answers} tokens for answers)")
        full = (group_size and len(current) >= group_size) or used + cost > room.answers
        if current and full:
            groups.append(current)
            current, used = [], 0
        current.append(aid)
        used += cost
    if current:
        groups.append(current)
    if len(groups) > 1 and len(groups[-1]) <= survivors:
        tail = groups.pop()
        last = groups[-1]
        merged = last + tail
        if (not group_size or len(merged) <= group_size) and room.fits(sizes[a] for a in merged):
            groups[-1] = merged
        else:
            groups.append(tail)
    if all(len(g) <= survivors for g in groups):
        raise BracketError(
            f"the judge context ({room.answers} tokens for answers) holds at most "
            f"{max(len(g) for g in groups)} answers per call, not more than survivors = "
            f"{survivors}: the tournament cannot shrink; raise the judge's context, lower "
            "worker_max_tokens or survivors")
    return groups


def final_fits(sizes: Sequence[int], room: JudgeRoom, group_size: int = 0) -> bool:
    """Whether one (final) judge call takes all these answers: they fit its context and,
    when ``group_size`` is set, there are no more than that many."""
    return room.fits(sizes) and (not group_size or len(sizes) <= group_size)


def simulate_bracket(count: int, size: int, room: JudgeRoom, survivors: int,
                     group_size: int = 0) -> list[int]:
    """Judge calls per round for ``count`` answers of ``size`` tokens each (worst case:
    every answer at the worker's max_tokens); the final judge is the last round's 1."""
    rounds: list[int] = []
    field = count
    while not final_fits([size] * field, room, group_size):
        ids = {str(i): size for i in range(field)}
        groups = plan_round(ids, room, survivors, group_size)
        judged = [g for g in groups if len(g) > survivors]
        rounds.append(len(judged))
        field = sum(min(len(g), survivors) for g in groups)
    rounds.append(1)
    return rounds


# -- citations -----------------------------------------------------------------------------

_ID_TOKEN = re.compile(r"\b[a-z2-9]{3,4}\b")


@dataclass
class Checked:
    """Ids a judge named, split into valid ones and ones it made up (or repeated)."""

    valid: list[str]
    invalid: list[str]


def check_ids(named: Iterable[object], presented: Sequence[str]) -> Checked:
    allowed = set(presented)
    valid: list[str] = []
    invalid: list[str] = []
    for raw in named:
        aid = str(raw).strip().lower().removeprefix("id ").strip("[]() #")
        if aid in allowed and aid not in valid:
            valid.append(aid)
        else:
            invalid.append(str(raw))
    return Checked(valid, invalid)


def ids_in_text(text: str, presented: Sequence[str]) -> list[str]:
    """Presented ids mentioned in free text (a judge that ignored the JSON format)."""
    allowed = set(presented)
    out: list[str] = []
    for m in _ID_TOKEN.findall(text.lower()):
        if m in allowed and m not in out:
            out.append(m)
    return out


def fill_survivors(kept: list[str], presented: Sequence[str], survivors: int,
                   answers: dict[str, str]) -> list[str]:
    """Exactly ``min(survivors, len(presented))`` ids: the judge's valid picks first, then
    (when it picked too few or invalid ones) the answers most others agree with."""
    out = kept[:survivors]
    if len(out) >= min(survivors, len(presented)):
        return out
    common, _ = majority(answers[a] for a in presented)
    rest = sorted((a for a in presented if a not in out),
                  key=lambda a: (normalise(answers[a]) != common, presented.index(a)))
    return out + rest[: min(survivors, len(presented)) - len(out)]


# -- budget --------------------------------------------------------------------------------

def worst_cost(in_per_1m: float, out_per_1m: float, prompt_tokens: int,
               max_tokens: int) -> float:
    return (prompt_tokens * in_per_1m + max_tokens * out_per_1m) / 1_000_000


@dataclass
class Budget:
    """Spend of one run against its limit (0: none). ``reserve`` is held back for the
    judge calls still to come."""

    limit_usd: float
    spent_usd: float = 0.0
    in_flight_usd: float = 0.0

    def can_start(self, worst_usd: float, reserve_usd: float = 0.0) -> bool:
        if not self.limit_usd:
            return True
        return self.spent_usd + self.in_flight_usd + worst_usd + reserve_usd <= self.limit_usd

    def start(self, worst_usd: float) -> None:
        self.in_flight_usd += worst_usd

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        self.in_flight_usd = max(0.0, self.in_flight_usd - worst_usd)
        self.spent_usd += actual_usd
