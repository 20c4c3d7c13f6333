"""``[[reasoners]]``: one reasoning recipe per table (workers, judge, bracket, budget)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from keel.settings_section import Section

DEFAULT_JUDGE_PROMPT = (
    "You are a senior architect. You will receive N proposed answers to a user question. "
    "Your job: 1) Discard any answer that contains factual errors or hallucinations. "
    "2) For the remaining answers, extract the best components. 3) Synthesize a final "
    "answer that is better than any single proposal. 4) Cite which worker contributed "
    "which insight."
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ReasonerSpec(Section):
    """One reasoning recipe: ``model = "reasoner/<name>"`` runs it."""

    name: str
    workers: list[str] = Field(min_length=1)  # worker models, used in turn (a mix)
    n: int = Field(default=8, ge=1)  # samples per run (a request may ask for fewer/more)
    max_n: int = Field(default=500, ge=1)  # the most a request may ask for
    worker_temperature: float = Field(default=0.9, ge=0.0, le=2.0)
    worker_max_tokens: int = Field(default=512, ge=1)
    judge: str = ""  # judge model; default: the first worker model
    judge_temperature: float = Field(default=0.1, ge=0.0, le=2.0)
    judge_max_tokens: int = Field(default=1024, ge=1)
    judge_prompt: str = DEFAULT_JUDGE_PROMPT
    max_concurrency: int = Field(default=25, ge=1)
    # tournament: when the answers do not fit the judge's context, groups of at most
    # `group_size` answers (0: as many as fit) each keep `survivors` for the next round
    group_size: int = Field(default=0, ge=0)
    survivors: int = Field(default=2, ge=1)
    # optional vote step: `vote_k` small models (`vote_model`, default the first worker)
    # each pick the best answers; the `vote_keep` with most votes go to the judge
    vote_k: int = Field(default=0, ge=0)
    vote_model: str = ""
    vote_keep: int = Field(default=8, ge=1)
    # early stop: when the first `early_stop` finished answers agree, cancel the rest
    early_stop: int = Field(default=0, ge=0)
    early_stop_match: Literal["normalised", "embedding"] = "normalised"
    early_stop_similarity: float = Field(default=0.92, gt=0.0, le=1.0)
    budget_usd: float = Field(default=0.0, ge=0.0)  # per run; 0: no limit
    min_survivors: int = Field(default=1, ge=1)  # fewer successful samples: the run fails
    retries: int = Field(default=2, ge=0)  # per sample, for 429 / 5xx / timeouts
    retry_base_s: float = Field(default=0.5, ge=0.0)
    retry_max_s: float = Field(default=8.0, ge=0.0)
    sample_timeout_s: float = Field(default=120.0, gt=0.0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"reasoner name {v!r}: use letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ReasonerSpec:
        if self.n > self.max_n:
            raise ValueError(f"n = {self.n} is above max_n = {self.max_n}")
        if self.min_survivors > self.n:
            raise ValueError(f"min_survivors = {self.min_survivors} is above n = {self.n}")
        return self

    @property
    def judge_model(self) -> str:
        return self.judge or self.workers[0]

    @property
    def voter_model(self) -> str:
        return self.vote_model or self.workers[0]

    def worker_for(self, index: int) -> str:
        return self.workers[index % len(self.workers)]


def check_unique(reasoners: list[ReasonerSpec]) -> list[ReasonerSpec]:
    seen: set[str] = set()
    for r in reasoners:
        if r.name in seen:
            raise ValueError(f"reasoner {r.name!r} is defined twice in [[reasoners]]")
        seen.add(r.name)
    return reasoners
