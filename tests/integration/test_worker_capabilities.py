"""A `keel worker --queues Q` builds only what Q's jobs need: the owners of Q (by their
declared `job_queues`), every `every_worker` capability (those shaping model calls) and
what those use or require. The declarations must match what each capability really
declares on the job runtime and whether it adds pipeline stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import make_settings
from keel import capabilities as capabilities_mod
from keel.app import build_services
from keel.capability import BuildContext, Capability
from keel.config import Settings
from keel.jobs.runtime import JobRuntime

REASONERS = [{"name": "deep", "workers": ["cheap"]}]
CHEAP = {"name": "cheap", "provider": "openai", "base_url": "http://127.0.0.1:9/v1",
         "api_key": "sk-x", "input_usd_per_1m": 1.0, "output_usd_per_1m": 2.0}


def everything_on(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path, models=[CHEAP], reasoners=REASONERS,
                      wallets={"enabled": True, "encryption_key": "k" * 40})
    s.firewall.semantic = False
    for section in ("batch", "qa", "hive", "remediation", "tuning"):
        getattr(s, section).enabled = True
    return s


def test_batch_worker_builds_the_pipeline_and_batch_only(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    s.batch.enabled = True
    caps = capabilities_mod.available()
    names = [c.name for c in capabilities_mod.for_queues(caps, s, ["keel.batch"])]
    # the request pipeline batch lines go through, then batch; not tools, approvals,
    # wallets (their imports and builds were most of a worker's start-up)
    assert names == ["firewall", "rag", "degrade", "cache", "batch"]
    # a worker serving every queue (no --queues) still builds every enabled capability
    on = [c.name for c in caps if c.enabled(s)]
    assert "tools" in on and "approvals" in on


def test_uses_and_requires_of_a_queue_owner_are_built(tmp_path: Path) -> None:
    s = everything_on(tmp_path)
    caps = capabilities_mod.available()
    names = {c.name for c in capabilities_mod.for_queues(caps, s, ["keel.workflows.map"])}
    # the Map queue's owner (approvals) uses tools and wallets; tools uses the firewall
    assert {"approvals", "tools", "wallets", "firewall"} <= names
    assert "batch" not in names and "qa" not in names


def test_declared_queues_and_every_worker_match_what_capabilities_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = everything_on(tmp_path)
    runtime = JobRuntime(s)
    declared: dict[str, set[str]] = {}
    for cap in capabilities_mod.available():  # record the queues each build declares
        def build(self: Capability, ctx: BuildContext, _init: Any = cap.__init__,
                  _name: str = cap.name) -> None:
            before = {q.name for q in runtime.queues()}
            _init(self, ctx)
            declared[_name] = {q.name for q in runtime.queues()} - before

        monkeypatch.setattr(cap, "__init__", build)
    svc = build_services(s, jobs=runtime)
    try:
        built = {c.name for c in svc.capabilities}
        assert built == {c.name for c in capabilities_mod.available()}  # all of them
        for cap in svc.capabilities:
            assert declared[cap.name] == set(type(cap).job_queues(s)), cap.name
            if cap.stages():
                assert type(cap).every_worker, f"{cap.name} adds stages: every worker " \
                    "must build it (jobs call models through the pipeline)"
    finally:
        svc.db.dispose()


@pytest.mark.parametrize("queue", ["keel.batch", "keel.qa.swarm", "keel.reasoning.deep"])
def test_worker_for_one_queue_builds_its_owner(tmp_path: Path, queue: str) -> None:
    s = everything_on(tmp_path)
    caps = capabilities_mod.available()
    names = {c.name for c in capabilities_mod.for_queues(caps, s, [queue])}
    owner = {"keel.batch": "batch", "keel.qa.swarm": "qa",
             "keel.reasoning.deep": "reasoning"}[queue]
    assert owner in names
    assert "approvals" not in names  # nothing here uses it


def test_a_worker_prepares_its_capabilities_before_it_builds_and_keeps_their_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import keel.app
    from keel.jobs.worker import serve

    events: list[Any] = []
    sentinel = object()

    class Prepared(Capability):
        name = "prepared"

        @classmethod
        def job_queues(cls, settings: Settings) -> list[str]:
            return ["test.prepared"]

        @classmethod
        async def prepare_worker(cls, settings: Settings, queues: Any) -> dict[str, Any]:
            events.append(("prepare", list(queues)))
            return {"local": sentinel}

    class Stop(Exception):
        pass

    def build(settings: Settings, **kw: Any) -> Any:
        events.append(("build", kw.get("providers")))
        raise Stop

    monkeypatch.setattr(keel.app, "build_services", build)
    with pytest.raises(Stop):
        asyncio.run(serve(make_settings(tmp_path), queues=["test.prepared"],
                          capabilities=[Prepared]))
    assert events == [("prepare", ["test.prepared"]), ("build", {"local": sentinel})]
