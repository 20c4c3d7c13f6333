"""Ladder config checks (start-up errors name the key) and alarm arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keel.config import load_settings
from keel.degrade.breaker import alarm_values
from keel.degrade.ladder import Ladder
from keel.degrade.settings import AlarmSettings
from keel.errors import ConfigError

MODELS = [
    {"name": "big", "upstream": "gpt-big", "input_usd_per_1m": 2.5, "output_usd_per_1m": 10},
    {"name": "small", "upstream": "gpt-small", "input_usd_per_1m": 0.15,
     "output_usd_per_1m": 0.6},
    {"name": "free", "upstream": "free"},
]


def ladder(tmp_path: Path, levels: list[dict[str, Any]], **kw: Any) -> Ladder:
    s = load_settings(None, data_dir=str(tmp_path), models=MODELS,
                      degrade={"levels": levels, **kw})
    return Ladder.build(s.degrade, s.model_table())


def test_valid_ladder_resolves_models(tmp_path: Path) -> None:
    lad = ladder(tmp_path, [{"name": "deep", "rag_top_k": 20, "models": {"big": "big"}},
                            {"name": "shallow", "rag_top_k": 3, "max_tokens": 64,
                             "models": {"big": "small"}},
                            {"name": "super_shallow", "rag_top_k": 0,
                             "models": {"big": "gemma-3-270m"}}])
    assert [lv.name for lv in lad.levels] == ["DEEP", "SHALLOW", "SUPER_SHALLOW"]
    assert lad.at(1).models["big"].name == "small" and lad.at(1).depth.rag_top_k == 3
    assert lad.by_name("shallow").index == 1 and lad.at(99).index == 2


def test_unknown_model_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"degrade\.levels\[1\] \(shallow\)\.models\.big.*"
                                          r"'gpt-9'"):
        ladder(tmp_path, [{"name": "deep"}, {"name": "shallow", "models": {"big": "gpt-9"}}])
    with pytest.raises(ConfigError, match=r"models\.nope: unknown model 'nope'"):
        ladder(tmp_path, [{"name": "deep", "models": {"nope": "big"}}])


def test_cycle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"levels\[0\].*cycle \(big -> small -> big\)"):
        ladder(tmp_path, [{"name": "deep", "models": {"big": "small", "small": "big"}}])


def test_missing_prices_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.big: model 'free' has no prices"):
        ladder(tmp_path, [{"name": "deep", "models": {"big": "free"}}])


def test_recovery_threshold_must_be_lower(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"degrade\.alarms\.0.*recover_below"):
        load_settings(None, data_dir=str(tmp_path), degrade={"alarms": [
            {"metric": "spend_usd_per_hour", "threshold": 1, "recover_below": 1}]})


def test_duplicate_level_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'DEEP' is used twice"):
        load_settings(None, data_dir=str(tmp_path),
                      degrade={"levels": [{"name": "deep"}, {"name": "Deep"}]})


def test_alarm_values_are_rates_per_unit() -> None:
    spend = AlarmSettings(metric="spend_usd_per_hour", threshold=1, recover_below=0.5,
                          window_s=60)
    calls = AlarmSettings(metric="invocations_per_minute", scope="tenant", threshold=10,
                          recover_below=5, window_s=30)
    totals = {60.0: {"usd": {"*": 0.01, "acme": 0.01}, "inv": {"*": 40}},
              30.0: {"usd": {}, "inv": {"*": 40, "acme": 30, "beta": 10}}}
    v = alarm_values([spend, calls], totals)
    assert v[spend.name] == {"*": pytest.approx(0.6)}  # $0.01 per minute = $0.60 per hour
    assert v[calls.name] == {"acme": 60.0, "beta": 20.0}
