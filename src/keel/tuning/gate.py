"""The evaluation gate: a candidate replaces the champion only when it is better on the
held-out split and keeps what the champion already got right.

* Held-out split: exact match (after normalising case, spacing and end punctuation) of the
  candidate vs the champion; the candidate must win by ``margin``.
* Regression set: every approved answer (thumbs-up) and every held-out example the
  champion already answers right. The candidate may lose at most
  ``regression_tolerance`` of them.
The report (scores, the reasons for a refusal, the examples that changed) is stored with
the version. A candidate that cannot even be evaluated is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from keel.tuning.dataset import Example
from keel.tuning.settings import GateSettings

_SPACE = re.compile(r"\s+")


class Answerer(Protocol):
    """Answers a prompt with a given adapter (``None``: the base model)."""

    async def answer(self, messages: list[dict[str, Any]], adapter: str | None) -> str: ...


def normalise(text: str) -> str:
    text = _SPACE.sub(" ", text.strip().lower())
    return text.strip(" .!?,;:\"'`")


def exact(answer: str, expected: str) -> bool:
    return normalise(answer) == normalise(expected)


@dataclass
class GateReport:
    passed: bool
    reasons: list[str]
    eval_n: int
    champion_eval: float
    candidate_eval: float
    regression_n: int
    regressions: int
    margin: float
    tolerance: float
    changed: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def _score(answerer: Answerer, examples: Sequence[Example],
                 adapter: str | None) -> list[tuple[bool, str]]:
    out = []
    for ex in examples:
        got = await answerer.answer(ex.messages, adapter)
        out.append((exact(got, ex.answer), got))
    return out


async def evaluate(answerer: Answerer, *, champion: str | None, candidate: str,
                   held_out: Sequence[Example], regression: Sequence[Example],
                   settings: GateSettings) -> GateReport:
    reasons: list[str] = []
    champ_eval = await _score(answerer, held_out, champion)
    cand_eval = await _score(answerer, held_out, candidate)
    champ_reg = await _score(answerer, regression, champion)
    # the regression set: approved answers and held-out examples the champion gets right
    reg_examples = [ex for ex, (ok, _) in zip(regression, champ_reg, strict=True) if ok]
    cand_reg = await _score(answerer, reg_examples, candidate)
    must_keep = [(ex, ok_c, got) for ex, (ok_c, got) in zip(reg_examples, cand_reg,
                                                            strict=True)]
    must_keep += [(ex, c[0], c[1]) for ex, ch, c in zip(held_out, champ_eval, cand_eval,
                                                        strict=True) if ch[0]]
    lost = [(ex, got) for ex, ok, got in must_keep if not ok]
    n = len(held_out)
    champ_acc = sum(ok for ok, _ in champ_eval) / n if n else 0.0
    cand_acc = sum(ok for ok, _ in cand_eval) / n if n else 0.0
    if n == 0:
        reasons.append("the held-out split is empty: nothing to judge the candidate on")
    elif cand_acc - champ_acc < settings.margin:
        reasons.append(f"held-out exact match {cand_acc:.3f} vs champion {champ_acc:.3f}: "
                       f"the candidate must win by at least {settings.margin:.3f}")
    lost_frac = len(lost) / len(must_keep) if must_keep else 0.0
    if lost_frac > settings.regression_tolerance:
        reasons.append(f"the candidate gets {len(lost)} of {len(must_keep)} answers wrong that "
                       f"the champion gets right (tolerance "
                       f"{settings.regression_tolerance:.3f})")
    changed: list[dict[str, Any]] = [
        {"prompt": _last_user(ex), "expected": ex.answer, "champion": ch[1], "candidate": c[1]}
               for ex, ch, c in zip(held_out, champ_eval, cand_eval, strict=True)
               if ch[0] != c[0]][:50]
    changed += [{"prompt": _last_user(ex), "expected": ex.answer, "candidate": got,
                 "regression": True} for ex, got in lost[:50]]
    return GateReport(passed=not reasons, reasons=reasons, eval_n=n,
                      champion_eval=round(champ_acc, 4), candidate_eval=round(cand_acc, 4),
                      regression_n=len(must_keep), regressions=len(lost),
                      margin=settings.margin, tolerance=settings.regression_tolerance,
                      changed=changed)


def _last_user(ex: Example) -> str:
    for m in reversed(ex.messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""
