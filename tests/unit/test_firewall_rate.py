"""The rate limit of a watched key's anonymous traffic: a sliding 60 s window, so a burst
around a minute boundary does not get twice the limit through."""

from __future__ import annotations

import pytest

from keel.config import FirewallSettings
from keel.firewall import state as state_mod
from keel.firewall.state import FirewallState
from keel.storage.kv_memory import MemoryKV


@pytest.mark.parametrize("second", [0.5, 30.0, 59.5])
async def test_the_limit_holds_across_a_minute_boundary(
        monkeypatch: pytest.MonkeyPatch, second: float) -> None:
    clock = [600.0 + second]  # `second` seconds into a minute
    monkeypatch.setattr(state_mod.time, "time", lambda: clock[0])
    state = FirewallState(MemoryKV(), FirewallSettings())
    got = [await state.within_rate("key:k", 3) for _ in range(3)]
    assert got == [True, True, True]
    assert not await state.within_rate("key:k", 3)  # the fourth in the same minute
    clock[0] = 660.2  # just past the boundary: the last 60 s still hold those requests
    assert not await state.within_rate("key:k", 3)
    clock[0] = 600.0 + second + 120  # two minutes on: both counted minutes have passed
    assert await state.within_rate("key:k", 3)


async def test_the_previous_minute_fades_out(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [600.0]
    monkeypatch.setattr(state_mod.time, "time", lambda: clock[0])
    state = FirewallState(MemoryKV(), FirewallSettings())
    for _ in range(4):
        assert await state.within_rate("key:k", 4)
    clock[0] = 690.0  # half of the previous minute is still inside the window: 2 carried
    assert await state.within_rate("key:k", 4)
    assert await state.within_rate("key:k", 4)
    assert not await state.within_rate("key:k", 4)
