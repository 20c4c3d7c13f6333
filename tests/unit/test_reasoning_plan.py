"""The pure mechanics of a reasoning run: ids, brackets, citations, agreement, retries,
budgets."""

from __future__ import annotations

import random

import pytest

from keel.errors import InvalidRequest, RateLimited, UpstreamError, UpstreamRejected
from keel.reasoning.plan import (
    ANSWER_FRAME_TOKENS,
    BracketError,
    Budget,
    JudgeRoom,
    agree,
    anonymous_ids,
    backoff_s,
    check_ids,
    fill_survivors,
    ids_in_text,
    majority,
    normalise,
    plan_round,
    retryable,
    shuffled,
    simulate_bracket,
)
from keel.reasoning.settings import ReasonerSpec


def test_ids_are_distinct_reproducible_and_not_positions() -> None:
    ids = anonymous_ids(500, "run_a")
    assert len(set(ids)) == 500
    assert ids == anonymous_ids(500, "run_a")
    assert ids != anonymous_ids(500, "run_b")
    assert all(not i.isdigit() for i in ids)


def test_shuffle_is_seeded_by_run() -> None:
    items = [str(i) for i in range(50)]
    a = shuffled(items, "r1", "final")
    assert a == shuffled(items, "r1", "final") and a != items
    assert a != shuffled(items, "r1", "round-1")
    assert sorted(a) == sorted(items)


def test_normalised_agreement_and_majority() -> None:
    assert normalise("  Paris. ") == normalise("paris") == "paris"
    assert agree(["Positive", "positive!", " POSITIVE"])
    assert not agree(["positive", "negative"])
    assert not agree(["", ""])
    assert majority(["b", "a", "A.", "b", "a"]) == ("a", 3)
    assert majority(["x", "y"]) == ("x", 1)  # tie: the first seen
    assert majority([]) == ("", 0)


def test_retry_classification() -> None:
    assert retryable(RateLimited("slow down"))
    assert retryable(UpstreamError("502"))
    assert retryable(TimeoutError())
    assert not retryable(UpstreamRejected("bad"))
    assert not retryable(InvalidRequest("bad"))
    assert not retryable(ValueError("bug"))


def test_backoff_grows_with_jitter_under_the_cap() -> None:
    rng = random.Random(1)
    d = [backoff_s(a, 0.5, 4.0, rng) for a in range(6)]
    assert 0.25 <= d[0] <= 0.5 and 0.5 <= d[1] <= 1.0
    assert all(2.0 <= x <= 4.0 for x in d[3:])
    assert len({round(x, 6) for x in d}) == len(d)  # jittered


def test_one_judge_when_everything_fits() -> None:
    room = JudgeRoom(context=8192, max_tokens=512, prompt_tokens=200)
    assert room.fits([50] * 50)
    assert simulate_bracket(50, 50, room, 2) == [1]


def test_bracket_rounds_shrink_until_the_final_judge_fits() -> None:
    room = JudgeRoom(context=8192, max_tokens=512, prompt_tokens=200)
    sizes = {f"a{i}": 60 for i in range(500)}
    groups = plan_round(sizes, room, survivors=2)
    assert sum(len(g) for g in groups) == 500
    assert all(room.fits(sizes[a] for a in g) for g in groups)
    assert all(len(g) > 2 for g in groups)
    rounds = simulate_bracket(500, 60, room, 2)
    assert rounds[-1] == 1 and len(rounds) >= 2
    assert rounds[0] == len(groups)


def test_group_size_caps_members_and_depth_grows() -> None:
    room = JudgeRoom(context=100_000, max_tokens=512, prompt_tokens=200)
    rounds = simulate_bracket(500, 20, room, 2, group_size=10)
    assert rounds == [50, 10, 2, 1]


def test_trailing_small_group_merges_or_passes() -> None:
    room = JudgeRoom(context=1000, max_tokens=100, prompt_tokens=100)  # 800 for answers
    per = 100 - ANSWER_FRAME_TOKENS  # exactly 8 per group
    sizes = {f"a{i}": per for i in range(17)}
    groups = plan_round(sizes, room, survivors=2)
    assert [len(g) for g in groups] == [8, 8, 1]  # the lone one cannot join: passes through


def test_a_context_that_cannot_shrink_the_field_is_refused() -> None:
    room = JudgeRoom(context=1000, max_tokens=100, prompt_tokens=100)
    with pytest.raises(BracketError, match="cannot shrink"):
        plan_round({f"a{i}": 300 for i in range(10)}, room, survivors=2)
    with pytest.raises(BracketError, match="does not fit"):
        plan_round({"a": 900}, room, survivors=2)


def test_citations_are_validated_against_presented_ids() -> None:
    presented = ["xk3", "p9a", "mm2"]
    c = check_ids(["xk3", "[P9A]", "zzz", "xk3", 7], presented)
    assert c.valid == ["xk3", "p9a"] and c.invalid == ["zzz", "xk3", "7"]
    assert ids_in_text("From xk3 and (mm2); not abc.", presented) == ["xk3", "mm2"]


def test_fill_survivors_prefers_judge_then_consensus() -> None:
    answers = {"a": "red", "b": "blue", "c": "blue", "d": "green"}
    assert fill_survivors(["d"], list(answers), 2, answers) == ["d", "b"]
    assert fill_survivors([], ["a", "b"], 5, answers) == ["a", "b"]  # tie: first seen
    assert fill_survivors(["a", "b", "c"], list(answers), 2, answers) == ["a", "b"]


def test_budget_holds_back_a_reserve() -> None:
    b = Budget(limit_usd=1.0)
    assert b.can_start(0.3, reserve_usd=0.5)
    b.start(0.3)
    assert not b.can_start(0.3, reserve_usd=0.5)
    b.settle(0.3, 0.1)
    assert b.spent_usd == pytest.approx(0.1) and b.can_start(0.3, reserve_usd=0.5)
    assert Budget(0.0).can_start(1e9)


def test_reasoner_settings_validation() -> None:
    r = ReasonerSpec(name="deep", workers=["m1", "m2"])
    assert r.judge_model == "m1" and r.worker_for(3) == "m2"
    with pytest.raises(ValueError, match="above max_n"):
        ReasonerSpec(name="x", workers=["m"], n=10, max_n=5)
    with pytest.raises(ValueError, match="reasoner name"):
        ReasonerSpec(name="bad name", workers=["m"])
    with pytest.raises(ValueError):
        ReasonerSpec(name="x", workers=[])


def test_virtual_models_are_added_by_capabilities_not_configured(tmp_path: object) -> None:
    from keel.config import ModelSpec, Settings
    from keel.errors import ConfigError
    from keel.providers.registry import ModelRegistry

    with pytest.raises(ValueError, match="reserved"):
        Settings(models=[{"name": "x", "provider": "virtual"}])
    with pytest.raises(ValueError, match="defined twice"):
        Settings(reasoners=[{"name": "a", "workers": ["m"]}, {"name": "a", "workers": ["m"]}])
    reg = ModelRegistry(Settings())
    reg.add_virtual(ModelSpec(name="reasoner/a", provider="virtual"))
    assert "reasoner/a" in reg and reg.get("reasoner/a").provider == "virtual"
    with pytest.raises(ConfigError):
        reg.add_virtual(ModelSpec(name="reasoner/a", provider="virtual"))
    with pytest.raises(InvalidRequest, match="cannot be called directly"):
        reg.provider(reg.get("reasoner/a"))


def test_lane_slots_divide_max_concurrency() -> None:
    from keel.reasoning.durable import MAX_LANE_SLOTS, lane_slots

    assert [lane_slots(c) for c in (1, 2, 4, 7, 10, 12, 25, 49, 50)] == [1, 2, 4, 1, 5, 4, 5,
                                                                          1, 5]
    for c in range(1, 200):
        assert c % lane_slots(c) == 0 and lane_slots(c) <= MAX_LANE_SLOTS
