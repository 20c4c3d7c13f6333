"""``[qa]`` settings: synthetic QA suites, the swarm runner's tiers and its gate."""

from __future__ import annotations

from pydantic import Field, SecretStr

from keel.settings_section import Section


class QaProfile(Section):
    """One tier of ``keel qa run --profile NAME``; command-line options override it."""

    sample: int | None = Field(default=50, ge=1)  # None: the whole suite
    concurrency: int = Field(default=50, ge=1, le=1000)
    judge: str | None = None  # a keel model name (or a model at judge_url); None: checks only
    judge_url: str | None = None  # an OpenAI-compatible base URL for the judge
    max_failure_rate: float = Field(default=0.02, ge=0, le=1)
    max_hard_failures: int = Field(default=0, ge=0)
    latency_budget_ms: float = Field(default=30_000, gt=0)
    canary: str = ""  # the token planted in the target's system prompt


def default_profiles() -> dict[str, QaProfile]:
    return {"branch": QaProfile(sample=50, concurrency=50),
            "main": QaProfile(sample=None, concurrency=200)}


class QaSettings(Section):
    enabled: bool = False
    # HMAC key for the sanitizer's pseudonyms (else $KEEL_SANITIZE_KEY or <data_dir>/sanitize.key)
    sanitize_key: SecretStr | None = None
    generator: str | None = None  # model that writes personas and prompts (default_model)
    tenant: str = "qa"  # the tenant keel's own judge/generator calls are metered on
    profiles: dict[str, QaProfile] = Field(default_factory=default_profiles)
