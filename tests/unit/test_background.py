"""Periodic background loops stop even when a driver swallows the cancellation."""

from __future__ import annotations

import asyncio
import time

import pytest

from keel.background import Periodic


async def test_stop_ends_a_loop_whose_step_swallows_the_cancellation() -> None:
    rounds = 0

    async def swallowing_step() -> None:  # what a racing Condition.wait can do to us
        nonlocal rounds
        rounds += 1
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            return

    p = Periodic("swallow", 0.01, swallowing_step, error="step failed", at_once=True)
    p.start()
    await asyncio.sleep(0.05)
    assert p.running and rounds == 1
    t0 = time.monotonic()
    await p.stop(timeout_s=5)
    assert time.monotonic() - t0 < 1.0  # the flag ended it at the next round
    assert not p.running and rounds == 1


async def test_errors_are_logged_and_the_next_round_retries(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("kv blip")

    p = Periodic("flaky", 0.01, flaky, error="refresh failed")
    p.start()
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    await p.stop()
    assert calls >= 3 and "refresh failed" in caplog.text


async def test_stop_gives_up_after_the_timeout_on_a_stuck_step() -> None:
    released = False

    async def stuck() -> None:
        while not released:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # ignores cancellation: stop() must not hang shutdown

    p = Periodic("stuck", 0.01, stuck, error="x", at_once=True)
    p.start()
    await asyncio.sleep(0.02)
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "stuck")
    t0 = time.monotonic()
    await p.stop(timeout_s=0.2)
    assert time.monotonic() - t0 < 1.0 and not task.done()
    released = True  # let the test's loop finish cleanly
    await asyncio.wait_for(task, 2)
