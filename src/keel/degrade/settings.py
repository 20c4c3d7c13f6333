"""Settings of the degradation ladder and its alarms (``[degrade]`` in keel.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keel.settings_section import Section

Metric = Literal["spend_usd_per_hour", "invocations_per_minute"]
DEFAULT_WINDOW_S = {"spend_usd_per_hour": 600.0, "invocations_per_minute": 60.0}


class LevelSettings(Section):
    """One rung: which concrete model serves each requested model, RAG depth, caps.
    ``rag_top_k = None`` (with ``rag_context_tokens = None``) keeps ``[rag]``'s depth."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    rag_top_k: int | None = Field(default=5, ge=0, le=1000)
    rag_context_tokens: int | None = Field(default=2000, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)  # caps max_tokens
    models: dict[str, str] = Field(default_factory=dict)  # requested name -> served model


class AlarmSettings(Section):
    """Breach when the metric is above ``threshold`` for ``evaluation_periods`` periods;
    OK when below ``recover_below`` (lower: hysteresis) for ``recovery_periods``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=64)
    metric: Metric
    scope: Literal["global", "tenant"] = "global"
    threshold: float = Field(gt=0)
    recover_below: float = Field(ge=0)
    window_s: float = Field(default=0.0, ge=0)  # 0: 600 s for spend, 60 s for invocations
    evaluation_periods: int = Field(default=2, ge=1)
    recovery_periods: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> AlarmSettings:
        if self.recover_below >= self.threshold:
            raise ValueError(f"recover_below ({self.recover_below:g}) must be lower than "
                             f"threshold ({self.threshold:g}) so the breaker does not flap")
        if not self.name:
            self.name = f"{self.metric}:{self.scope}"
        if not self.window_s:
            self.window_s = DEFAULT_WINDOW_S[self.metric]
        return self


def default_levels() -> list[LevelSettings]:
    """The ladder a fresh install gets: DEEP keeps ``[rag]``'s depth and no cap; SHALLOW
    retrieves 2 chunks in at most 600 tokens and caps answers at 256 tokens. Neither maps
    models, so both serve the requested model (the local one until an upstream is
    configured); map e.g. ``big = "small"`` in SHALLOW once there is a cheaper model."""
    return [LevelSettings(name="deep", rag_top_k=None, rag_context_tokens=None),
            LevelSettings(name="shallow", rag_top_k=2, rag_context_tokens=600,
                          max_tokens=256)]


class LadderConfig(BaseModel):
    """What the admin API may change at runtime: the levels and the alarms."""

    model_config = ConfigDict(extra="forbid")

    levels: list[LevelSettings] = Field(min_length=1, max_length=16)
    alarms: list[AlarmSettings] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _unique(self) -> LadderConfig:
        check_unique(self.levels, self.alarms)
        return self


def check_unique(levels: list[LevelSettings], alarms: list[AlarmSettings]) -> None:
    for what, names in (("levels", [lv.name.upper() for lv in levels]),
                        ("alarms", [a.name for a in alarms])):
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"degrade.{what}: name {sorted(dup)[0]!r} is used twice")


class DegradeSettings(Section):
    enabled: bool = True
    period_s: float = Field(default=60.0, gt=0)  # evaluation period
    bucket_s: float = Field(default=5.0, gt=0)  # rolling-window bucket
    refresh_s: float = Field(default=0.25, gt=0)  # level (and ladder) refresh period
    # empty: the default ladder (default_levels); the admin API can replace levels and
    # alarms at runtime (stored in the KV store, they win over these until reset)
    levels: list[LevelSettings] = Field(default_factory=list)
    alarms: list[AlarmSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DegradeSettings:
        check_unique(self.levels, self.alarms)
        return self

    @property
    def active(self) -> bool:
        return self.enabled

    def ladder_config(self) -> LadderConfig:
        """The configured ladder (keel.toml), or the default one."""
        return LadderConfig(levels=self.levels or default_levels(), alarms=self.alarms)
