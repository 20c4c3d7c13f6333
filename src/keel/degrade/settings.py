"""Settings of the degradation ladder and its alarms (``[degrade]`` in keel.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from keel.settings_section import Section

Metric = Literal["spend_usd_per_hour", "invocations_per_minute"]
DEFAULT_WINDOW_S = {"spend_usd_per_hour": 600.0, "invocations_per_minute": 60.0}


class LevelSettings(Section):
    """One rung: which concrete model serves each requested model, RAG depth, caps."""

    name: str = Field(min_length=1, max_length=32)
    rag_top_k: int = Field(default=5, ge=0, le=1000)
    rag_context_tokens: int = Field(default=2000, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)  # caps max_tokens
    models: dict[str, str] = Field(default_factory=dict)  # requested name -> served model


class AlarmSettings(Section):
    """Breach when the metric is above ``threshold`` for ``evaluation_periods`` periods;
    OK when below ``recover_below`` (lower: hysteresis) for ``recovery_periods``."""

    name: str = ""
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


class DegradeSettings(Section):
    enabled: bool = True  # the stage runs when enabled and at least one level is defined
    period_s: float = Field(default=60.0, gt=0)  # evaluation period
    bucket_s: float = Field(default=5.0, gt=0)  # rolling-window bucket
    refresh_s: float = Field(default=0.25, gt=0)  # level refresh period
    levels: list[LevelSettings] = Field(default_factory=list)
    alarms: list[AlarmSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DegradeSettings:
        for what, names in (("levels", [lv.name.upper() for lv in self.levels]),
                            ("alarms", [a.name for a in self.alarms])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"degrade.{what}: name {sorted(dup)[0]!r} is used twice")
        return self

    @property
    def active(self) -> bool:
        return self.enabled and bool(self.levels)
