"""The cache judge's remembered verdicts stay within the tenant that paid for them."""

from __future__ import annotations

from typing import Any

import pytest

from keel.cache.judge import Judge
from keel.config import ModelSpec
from keel.storage.kv_memory import MemoryKV


class _Provider:
    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, body: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        self.calls += 1
        return {"choices": [{"message": {"content": "yes"}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 1}}


class _Models:
    def __init__(self) -> None:
        self.spec = ModelSpec(name="judge", provider="openai", upstream="judge",
                              input_usd_per_1m=1.0, output_usd_per_1m=2.0)
        self.p = _Provider()

    def get(self, name: str) -> ModelSpec:
        return self.spec

    def provider(self, spec: ModelSpec) -> _Provider:
        return self.p


@pytest.mark.asyncio
async def test_a_verdict_is_remembered_per_tenant_only() -> None:
    models = _Models()
    judge = Judge(models, MemoryKV())  # type: ignore[arg-type]
    a, b = "How do I switch off alerts?", "How can I disable alerts?"
    first = await judge.same("acme", "judge", a, b)
    assert first.same and not first.cached and first.usd > 0
    again = await judge.same("acme", "judge", b, a)  # either order: one verdict
    assert again.same and again.cached and again.usd == 0
    other = await judge.same("globex", "judge", a, b)
    # another tenant's judge call is its own: a remembered verdict would tell it that
    # acme asked exactly these two questions
    assert not other.cached and models.p.calls == 2


@pytest.mark.parametrize("ttl", [0, -5])
def test_a_namespace_ttl_must_be_positive(ttl: float) -> None:
    from pydantic import ValidationError

    from keel.cache.settings import CacheSettings

    # a non-positive TTL would expire every entry as it is written: a cache that never hits
    with pytest.raises(ValidationError, match="ttl_s must be positive"):
        CacheSettings.model_validate({"namespaces": {"x": {"ttl_s": ttl}}})
