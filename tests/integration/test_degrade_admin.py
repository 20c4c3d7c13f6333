"""The default ladder and the degradation admin API, with a scripted fake LLM (the tests are
about keel's own logic: levels, caps, validation, audit, propagation). Storage is real
SQLite; two gateway apps sharing the SQLite KV file stand in for two replicas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from conftest import make_settings
from keel.app import build_services, create_app
from keel.cli.main import build as build_cli
from keel.config import Settings
from keel.degrade import audit
from keel.degrade.service import Degrader
from keel.gateway.services import Services

from fakes import FakeUpstream

LADDER = {
    "levels": [
        {"name": "deep", "rag_top_k": 8, "rag_context_tokens": 4000},
        {"name": "shallow", "rag_top_k": 2, "rag_context_tokens": 600, "max_tokens": 100},
        {"name": "minimal", "rag_top_k": 0, "max_tokens": 20},
    ],
    "alarms": [{"metric": "invocations_per_minute", "threshold": 500, "recover_below": 100}],
}


def chat(max_tokens: int = 1000, n: int = 0) -> dict[str, Any]:
    return {"model": "fake-gpt", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"hello {n} {time.time()}"}]}


def fresh_settings(tmp_path: Path, up: FakeUpstream, **kw: Any) -> Settings:
    """No [degrade] section at all: what a new user has."""
    s = make_settings(tmp_path, up, **kw)
    s.degrade.refresh_s = 0.1
    return s


class Replica:
    def __init__(self, settings: Settings) -> None:
        self.svc: Services = build_services(settings)
        self.app = create_app(settings, services=self.svc)
        self.c = httpx.AsyncClient(transport=httpx.ASGITransport(
            app=self.app, client=("127.0.0.1", 5555)), base_url="http://keel")


@pytest.fixture
async def replicas(tmp_path: Path, fake_upstream: FakeUpstream,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Replica]]:
    monkeypatch.chdir(tmp_path)
    shared = {"kv_url": f"sqlite:///{tmp_path}/kv.db",
              "database_url": f"sqlite:///{tmp_path}/keel.db"}
    reps = [Replica(fresh_settings(tmp_path / f"r{i}", fake_upstream, **shared))
            for i in range(2)]
    a, b = reps
    async with a.app.router.lifespan_context(a.app), b.app.router.lifespan_context(b.app):
        yield reps
    for r in reps:
        await r.c.aclose()


def keys(r: Replica) -> tuple[dict[str, str], dict[str, str]]:
    admin = r.svc.keys.create("acme", admin=True).secret
    user = r.svc.keys.create("acme", agent="bot").secret
    return {"authorization": f"Bearer {admin}"}, {"authorization": f"Bearer {user}"}


def test_mode_set_shallow_works_on_a_fresh_install(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')  # nothing about degrade
    cli = build_cli()
    r = CliRunner().invoke(cli, ["-c", str(cfg), "mode", "set", "shallow"])
    assert r.exit_code == 0, r.output
    assert "SHALLOW" in r.output
    r = CliRunner().invoke(cli, ["-c", str(cfg), "mode", "show", "--json"])
    status = json.loads(r.output)
    assert status["mode"] == "SHALLOW" and status["levels"] == ["DEEP", "SHALLOW"]
    assert status["ladder_source"] == "default"


async def test_default_ladder_caps_tokens_in_shallow_and_keeps_the_model(
        replicas: list[Replica], fake_upstream: FakeUpstream) -> None:
    a, _ = replicas
    admin, _user = keys(a)
    r = await a.c.post("/v1/chat/completions", json=chat(), headers=admin)
    assert r.status_code == 200 and r.headers["x-keel-mode"] == "DEEP"
    assert fake_upstream.calls[-1]["body"]["max_tokens"] == 1000  # DEEP: no cap
    put = await a.c.put("/v1/admin/degrade/mode", json={"mode": "shallow"}, headers=admin)
    assert put.status_code == 200, put.text
    r = await a.c.post("/v1/chat/completions", json=chat(n=1), headers=admin)
    assert r.headers["x-keel-mode"] == "SHALLOW"
    sent = fake_upstream.calls[-1]["body"]
    assert sent["max_tokens"] == 256 and sent["model"] == "gpt-4o-mini"  # same model
    assert (await a.c.delete("/v1/admin/degrade/mode", headers=admin)).json()["mode"] == "DEEP"
    # the capped answer was not cached: back in DEEP the same request gets a full answer
    calls = len(fake_upstream.calls)
    r = await a.c.post("/v1/chat/completions", json=chat(n=1), headers=admin)
    assert r.headers["x-keel-mode"] == "DEEP" and r.headers["x-keel-cache"] == "miss"
    assert len(fake_upstream.calls) == calls + 1
    assert fake_upstream.calls[-1]["body"]["max_tokens"] == 1000


async def test_ladder_changes_at_runtime_reach_another_replica_within_a_second(
        replicas: list[Replica], fake_upstream: FakeUpstream) -> None:
    a, b = replicas
    admin, _ = keys(a)
    t0 = time.perf_counter()
    r = await a.c.put("/v1/admin/degrade/ladder", json=LADDER, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["levels"] == ["DEEP", "SHALLOW", "MINIMAL"]
    assert r.json()["ladder_source"] == "runtime"
    r = await a.c.put("/v1/admin/degrade/mode", json={"mode": "minimal", "duration_s": 60},
                      headers=admin)
    assert r.status_code == 200 and r.json()["mode"] == "MINIMAL"
    while b.svc.get(Degrader).flags.level.name != "MINIMAL":
        assert time.perf_counter() - t0 < 1.0, "replica b did not see the new ladder in 1 s"
        await asyncio.sleep(0.01)
    resp = await b.c.post("/v1/chat/completions", json=chat(), headers=admin)
    assert resp.headers["x-keel-mode"] == "MINIMAL"
    assert fake_upstream.calls[-1]["body"]["max_tokens"] == 20
    assert b.svc.get(Degrader).settings.alarms[0].threshold == 500
    # back to the default ladder everywhere; the override clamps to the bottom level
    assert (await a.c.delete("/v1/admin/degrade/ladder", headers=admin)).status_code == 200
    while b.svc.get(Degrader).source != "default":
        assert time.perf_counter() - t0 < 3.0
        await asyncio.sleep(0.01)
    assert b.svc.get(Degrader).flags.level.name == "SHALLOW"
    flips = a.svc.db.transaction(lambda c: audit.recent(c, 10))
    config = [f for f in flips if f.scope == "config"]
    assert [f.reason.split(":")[0] for f in config] == ["ladder reset to default",
                                                        "ladder set"]
    assert config[-1].actor.startswith("api:key:")
    assert config[-1].metrics["ladder"]["levels"][2]["name"] == "minimal"


@pytest.mark.parametrize("body, message", [
    ({"levels": []}, "levels"),
    ({"levels": [{"name": "deep"}, {"name": "DEEP"}]}, "used twice"),
    ({"levels": [{"name": "deep", "models": {"fake-gpt": "gpt-9"}}]}, "unknown model 'gpt-9'"),
    ({"levels": [{"name": "deep", "max_tokens": 0}]}, "max_tokens"),
    ({"levels": [{"name": "deep", "colour": "red"}]}, "colour"),
    ({"levels": [{"name": "has space"}]}, "name"),
    ({"levels": [{"name": "deep"}], "alarms": [
        {"metric": "invocations_per_minute", "threshold": 5, "recover_below": 9}]},
     "must be lower than threshold"),
    ({"levels": [{"name": "deep"}], "alarms": [{"metric": "cpu", "threshold": 5,
                                                 "recover_below": 1}]}, "metric"),
    ([1, 2], "JSON object"),
])
async def test_bad_ladders_are_refused_and_change_nothing(
        replicas: list[Replica], body: Any, message: str) -> None:
    a, _ = replicas
    admin, _ = keys(a)
    r = await a.c.put("/v1/admin/degrade/ladder", json=body, headers=admin)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    status = (await a.c.get("/v1/admin/degrade", headers=admin)).json()
    assert status["ladder_source"] == "default" and status["levels"] == ["DEEP", "SHALLOW"]


async def test_only_admin_keys_change_the_ladder(replicas: list[Replica]) -> None:
    a, _ = replicas
    admin, user = keys(a)
    for method, path, body in (("PUT", "/v1/admin/degrade/ladder", LADDER),
                               ("PUT", "/v1/admin/degrade/mode", {"mode": "shallow"}),
                               ("DELETE", "/v1/admin/degrade/mode", None),
                               ("GET", "/v1/admin/degrade", None)):
        r = await a.c.request(method, path, json=body, headers=user)
        assert r.status_code == 403, (path, r.text)
        assert (await a.c.request(method, path, json=body)).status_code == 401
    bad = [({"mode": "turbo"}, "unknown mode"), ({"mode": "shallow", "duration_s": -1},
                                                 "duration_s"),
           ({"mode": "shallow", "duration_s": "1h"}, "duration_s"), ({}, "mode"),
           ({"mode": "shallow", "scope": "acme"}, "scope")]
    for body, why in bad:
        r = await a.c.put("/v1/admin/degrade/mode", json=body, headers=admin)
        assert r.status_code == 400 and why in r.text, r.text
    assert (await a.c.get("/v1/admin/degrade", headers=admin)).json()["mode"] == "DEEP"


async def test_console_changes_the_ladder_and_the_mode(replicas: list[Replica]) -> None:
    import re

    a, b = replicas
    admin_key = a.svc.keys.create("acme", admin=True).secret
    user_key = a.svc.keys.create("acme", agent="bot").secret
    c = a.c
    login = await c.post("/console/login", data={"api_key": admin_key})
    assert login.status_code == 303
    c.cookies = login.cookies
    page = await c.get("/console/mode")
    assert page.status_code == 200 and 'id="ladder"' in page.text
    assert '<strong id="ladder-source">default</strong>' in page.text
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert m is not None
    csrf = m.group(1)
    r = await c.post("/console/mode/change", data={"csrf": csrf, "op": "ladder",
                                                   "ladder": json.dumps(LADDER)})
    assert r.status_code == 303 and "ladder+saved" in r.headers["location"]
    r = await c.post("/console/mode/change", data={"csrf": csrf, "op": "mode",
                                                   "mode": "minimal", "minutes": "5"})
    assert r.status_code == 303 and "MINIMAL" in r.headers["location"]
    t0 = time.perf_counter()
    while b.svc.get(Degrader).flags.level.name != "MINIMAL":
        assert time.perf_counter() - t0 < 1.0
        await asyncio.sleep(0.01)
    bad = await c.post("/console/mode/change", data={"csrf": csrf, "op": "ladder",
                                                     "ladder": "{not json"})
    assert "err=" in bad.headers["location"]
    shown = await c.get(bad.headers["location"])
    assert 'id="err"' in shown.text and "not valid JSON" in shown.text
    assert (await c.post("/console/mode/change", data={"op": "reset"})).status_code == 403
    flips = a.svc.db.transaction(lambda conn: audit.recent(conn, 10))
    assert {f.actor for f in flips} == {f"console:{a.svc.keys.list()[0].id}"}
    # a non-admin console session sees the ladder but cannot change it
    c.cookies.clear()
    login = await c.post("/console/login", data={"api_key": user_key})
    c.cookies = login.cookies
    page = await c.get("/console/mode")
    assert page.status_code == 200 and 'id="ladder"' not in page.text
    assert "&#34;minimal&#34;" in page.text  # shown read-only (escaped JSON)
    r = await c.post("/console/mode/change", data={"csrf": csrf, "op": "reset"})
    assert r.status_code == 403
    assert a.svc.get(Degrader).source == "runtime"


async def test_alarms_added_at_runtime_drive_the_breaker(replicas: list[Replica]) -> None:
    a, _ = replicas
    admin, _ = keys(a)
    dg = a.svc.get(Degrader)
    assert dg is not None and not dg.stage.metering  # the default ladder has no alarms
    ladder = {"levels": LADDER["levels"][:2], "alarms": [
        {"metric": "invocations_per_minute", "threshold": 2, "recover_below": 1,
         "window_s": 60, "evaluation_periods": 1}]}
    assert (await a.c.put("/v1/admin/degrade/ladder", json=ladder,
                          headers=admin)).status_code == 200
    assert dg.stage.metering and dg.breaker._ticker is not None
    for n in range(5):
        assert (await a.c.post("/v1/chat/completions", json=chat(n=n),
                               headers=admin)).status_code == 200
    ev = await dg.breaker.evaluate(force_leader=True)
    assert [(f.from_level, f.to_level) for f in ev.flips] == [("DEEP", "SHALLOW")]
    assert "invocations_per_minute:global" in ev.flips[0].reason
    assert dg.flags.level.name == "SHALLOW"
