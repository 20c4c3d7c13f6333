"""The training trigger: N new trainable corrections or a schedule, per model. A due round
is the durable workflow ``keel.tuning.round`` on the real job runtime (DBOS on SQLite) under
an id derived from the trigger, so asking twice (two ticks, two replicas) starts one round;
while nothing is due DBOS is never launched. The rounds here fail fast on purpose (the
corrections point at no logged request, so the dataset is empty): these tests are about
when a round starts, not about training."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.gateway.services import Services
from keel.jobs.runtime import JobRuntime
from keel.tuning import store
from keel.tuning.loop import TuningLoop
from keel.tuning.registry import Version, VersionRegistry
from keel.tuning.settings import TuningSettings
from keel.tuning.trigger import Rule, due, rule

MODEL = "gemma-3-270m"


def _version(created: float) -> Version:
    return Version(id=f"{MODEL}@v1", model=MODEL, number=1, parent="", base_model="b",
                   adapter="a", dataset_hash="d", hyperparams={}, metrics={}, report=None,
                   status="promoted", created=created)


def test_due_counts_corrections_per_model_and_the_schedule_needs_a_new_one():
    r = Rule(min_new_corrections=3, every_hours=1.0)
    assert due(MODEL, r, None, 0, now=1e9) is None  # a schedule never trains on nothing
    assert due(MODEL, Rule(3, 0.0), None, 2, now=1e9) is None
    d = due(MODEL, r, None, 3, now=1e9)
    assert d is not None and d.reason == "corrections"
    assert d.workflow_id == f"keel.tuning.round:{MODEL}:base:n1"
    # a 4th correction is the same trigger (same id); the 6th is the next one
    assert due(MODEL, r, None, 4, now=1e9) == d
    assert due(MODEL, r, None, 6, now=1e9).workflow_id.endswith(":n2")  # type: ignore[union-attr]
    last = _version(created=1e9)
    assert due(MODEL, r, last, 1, now=1e9 + 1800) is None  # within the hour
    s = due(MODEL, r, last, 1, now=1e9 + 3600)
    assert s is not None and s.reason == "schedule"
    assert s.workflow_id.startswith(f"keel.tuning.round:{MODEL}:{MODEL}@v1:t")
    # per-model settings override the [tuning] defaults, field by field
    t = TuningSettings.model_validate({"min_new_corrections": 50, "every_hours": 0,
                                       "triggers": {MODEL: {"every_hours": 24}}})
    assert rule(t, MODEL) == Rule(50, 24.0)
    assert rule(t, "other") == Rule(50, 0.0)


def _app_settings(tmp_path: Path, **tuning: Any) -> Any:
    s = make_settings(tmp_path, tuning={"enabled": True, "auto_train": True, **tuning})
    s.request_log.flush_interval_s = 0.02
    return s


async def _add_corrections(svc: Services, n: int, start: int = 0) -> None:
    def add(c: Any) -> None:
        now = time.time()
        for i in range(start, start + n):
            c.execute(store.feedback.insert().values(
                request_id=f"req-{i}", key_id="k", tenant="acme", model=MODEL, rating=-1,
                correction=f"answer {i}", trainable=True, created=now, updated=now))
    await svc.db.run(add)


async def _rounds(prefix: str = f"keel.tuning.round:{MODEL}:") -> list[Any]:
    from dbos import DBOS

    return await DBOS.list_workflows_async(workflow_id_prefix=prefix)


@pytest.fixture
async def app_svc(tmp_path: Path, request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    monkeypatch.chdir(tmp_path)
    svc = build_services(_app_settings(tmp_path, **request.param))
    app = create_app(svc.settings, services=svc)
    async with app.router.lifespan_context(app):
        yield svc


@pytest.mark.parametrize("app_svc", [{"min_new_corrections": 3, "check_every_s": 3600}],
                         indirect=True)
async def test_n_new_corrections_start_exactly_one_durable_round(app_svc: Services):
    svc = app_svc
    loop = svc.get(TuningLoop)
    trigger = loop.trigger_loop()
    await _add_corrections(svc, 2)
    assert await trigger.tick() == []
    assert not svc.get(JobRuntime).launched  # nothing due: DBOS is not even launched
    await _add_corrections(svc, 1, start=2)
    # two checks at once (two replicas sharing the system database ask the same way)
    started = await asyncio.gather(trigger.tick(), trigger.tick(), loop.maybe_trigger(MODEL))
    assert sum(len(s) for s in started[:2]) + int(started[2]) >= 1
    rounds = await _rounds()
    assert [w.workflow_id for w in rounds] == [f"keel.tuning.round:{MODEL}:base:n1"]
    from dbos import DBOS

    handle = await DBOS.retrieve_workflow_async(rounds[0].workflow_id)
    out = await handle.get_result()
    assert out["status"] == "failed" and "trainable corrections" in out["reason"]
    await trigger.tick()  # the same trigger after the round ended: not started again
    assert len(await _rounds()) == 1
    assert await svc.get(VersionRegistry).serving(MODEL) is None  # a failed round serves nothing


@pytest.mark.parametrize("app_svc", [{"min_new_corrections": 1000, "check_every_s": 0.2,
                                      "triggers": {MODEL: {"every_hours": 1}}}],
                         indirect=True)
async def test_the_schedule_starts_a_round_from_the_background_loop(app_svc: Services):
    svc = app_svc
    await asyncio.sleep(0.6)  # a few ticks with no corrections: nothing starts
    assert not svc.get(JobRuntime).launched
    await _add_corrections(svc, 1)  # far below 1000, but the hour since "never" has passed
    for _ in range(100):
        if svc.get(JobRuntime).launched and await _rounds():
            break
        await asyncio.sleep(0.1)
    rounds = await _rounds()
    assert len(rounds) == 1 and ":base:t" in rounds[0].workflow_id
    await asyncio.sleep(0.6)  # later ticks in the same hour slot: still one round
    assert len(await _rounds()) == 1
