"""The degradation ladder and spend breaker in the gateway, with a scripted fake LLM.

The upstream is the scripted fake (the tests are about keel's own logic: levels, model
swaps, alarms, hysteresis, override, audit, gauges). Storage is real SQLite, or a real
Valkey shared by two gateway apps for the replica test.
"""

from __future__ import annotations

import asyncio
import itertools
import time
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

LEVELS = [
    {"name": "deep", "rag_top_k": 20, "rag_context_tokens": 15000, "models": {"big": "big"}},
    {"name": "shallow", "rag_top_k": 3, "rag_context_tokens": 1500, "max_tokens": 64,
     "models": {"big": "small"}},
    {"name": "super_shallow", "rag_top_k": 0, "max_tokens": 16, "models": {"big": "small"}},
]
# 20 calls per minute trips; under 5 per minute is OK again
ALARMS = [{"metric": "invocations_per_minute", "threshold": 20, "recover_below": 5,
           "window_s": 60, "evaluation_periods": 2, "recovery_periods": 2}]


def dg_settings(tmp_path: Path, up: FakeUpstream, **kw: Any) -> Settings:
    models = [
        {"name": "big", "upstream": "gpt-big", "base_url": up.base_url, "api_key": "sk-x",
         "input_usd_per_1m": 2.5, "output_usd_per_1m": 10.0},
        {"name": "small", "upstream": "gpt-small", "base_url": up.base_url, "api_key": "sk-x",
         "input_usd_per_1m": 0.15, "output_usd_per_1m": 0.6},
    ]
    degrade = {"levels": LEVELS, "alarms": ALARMS, "period_s": 3600, "bucket_s": 1,
               "refresh_s": 0.1}
    s = make_settings(tmp_path, None, models=models, degrade=degrade, **kw)
    s.request_log.flush_interval_s = 0.02
    return s


@pytest.fixture
async def gw(tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
             ) -> Any:
    monkeypatch.chdir(tmp_path)
    s = dg_settings(tmp_path, fake_upstream, auth_required=False)
    svc = build_services(s)
    app = create_app(s, services=svc)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            yield c, svc


_N = itertools.count()


def body(max_tokens: int | None = None) -> dict[str, Any]:
    # a new prompt each time: a cache hit (the stage in front of the ladder) would not count
    text = f"hi #{next(_N)}"
    b: dict[str, Any] = {"model": "big", "messages": [{"role": "user", "content": text}]}
    if max_tokens:
        b["max_tokens"] = max_tokens
    return b


async def burst(c: httpx.AsyncClient, n: int) -> list[httpx.Response]:
    rs = await asyncio.gather(*[c.post("/v1/chat/completions", json=body()) for _ in range(n)])
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    return list(rs)


async def evaluate(svc: Services) -> list[str]:
    ev = await svc.get(Degrader).breaker.evaluate(force_leader=True)
    return [f"{f.from_level}->{f.to_level}" for f in ev.flips]


async def test_breaker_steps_down_after_evaluation_periods_and_heals_without_flapping(
    gw: Any, fake_upstream: FakeUpstream
) -> None:
    c, svc = gw
    r = await c.post("/v1/chat/completions", json=body(max_tokens=500))
    assert r.headers["x-keel-mode"] == "DEEP"
    assert fake_upstream.calls[-1]["body"]["model"] == "gpt-big"
    assert fake_upstream.calls[-1]["body"]["max_tokens"] == 500

    await burst(c, 30)  # 31 calls in the 60 s window: above 20
    assert await evaluate(svc) == []  # 1st breaching period: not yet
    assert await evaluate(svc) == ["DEEP->SHALLOW"]  # 2nd: trips
    r = await c.post("/v1/chat/completions", json=body(max_tokens=500))
    assert r.status_code == 200 and r.headers["x-keel-mode"] == "SHALLOW"
    sent = fake_upstream.calls[-1]["body"]
    assert sent["model"] == "gpt-small" and sent["max_tokens"] == 64
    # still breaching: another two periods step down once more, then it holds at the bottom
    assert await evaluate(svc) == []
    assert await evaluate(svc) == ["SHALLOW->SUPER_SHALLOW"]
    assert await evaluate(svc) == [] and await evaluate(svc) == []
    assert svc.get(Degrader).flags.level.name == "SUPER_SHALLOW"

    # the spike passes: the window empties (counters expire) and it heals one rung at a time
    for key in await svc.kv.keys("dg:m:"):
        await svc.kv.delete(key)
    await c.post("/v1/chat/completions", json=body())  # 1 call/min: below recover_below
    assert await evaluate(svc) == []
    assert await evaluate(svc) == ["SUPER_SHALLOW->SHALLOW"]
    assert await evaluate(svc) == []
    assert await evaluate(svc) == ["SHALLOW->DEEP"]
    assert await evaluate(svc) == [] and await evaluate(svc) == []  # stays at the top

    # in the hysteresis band (between 5 and 20 per minute) nothing moves either way
    await burst(c, 10)
    assert [await evaluate(svc) for _ in range(4)] == [[], [], [], []]

    flips = await svc.db.run(lambda c_: audit.recent(c_, 10))
    assert [f"{f.from_level}->{f.to_level}" for f in reversed(flips)] == [
        "DEEP->SHALLOW", "SHALLOW->SUPER_SHALLOW", "SUPER_SHALLOW->SHALLOW", "SHALLOW->DEEP"]
    first = flips[-1]
    assert first.reason.startswith("alarm invocations_per_minute:global")
    assert first.metrics["invocations_per_minute:global"] == pytest.approx(31, abs=1)
    assert first.actor.startswith("breaker@")


async def test_spend_alarm_uses_metered_usd_and_gauges_are_exported(gw: Any) -> None:
    c, svc = gw
    await burst(c, 4)  # 11 prompt + 7 completion tokens on "big": $0.0000975 each
    await svc.get(Degrader).meter.flush()
    values = await svc.get(Degrader).breaker.compute(time.time())
    assert values["invocations_per_minute:global"]["*"] == pytest.approx(4)
    totals = await svc.get(Degrader).meter.totals(60)
    assert totals["usd"]["*"] == pytest.approx(4 * (11 * 2.5 + 7 * 10) / 1e6)
    assert totals["inv"]["default"] == 4  # per tenant too
    await evaluate(svc)
    metrics = svc.metrics.render().decode()
    assert 'keel_degrade_level{scope="*"} 0.0' in metrics
    assert 'keel_degrade_alarm_value{alarm="invocations_per_minute:global",scope="*"} 4.0' \
        in metrics


async def test_override_pins_the_level_and_auto_releases_it(gw: Any) -> None:
    c, svc = gw
    dg = svc.get(Degrader)
    await dg.set_mode("shallow", 3600, "test")
    assert (await c.post("/v1/chat/completions", json=body())).headers["x-keel-mode"] == \
        "SHALLOW"
    await burst(c, 30)
    await evaluate(svc)
    await evaluate(svc)  # the breaker moves its own level underneath ...
    assert dg.flags.state.level == 1 and dg.flags.level.name == "SHALLOW"  # ... override wins
    await dg.set_auto("test")
    assert dg.flags.level.name == "SHALLOW"  # back to the breaker's choice
    await dg.set_mode("deep", 0.2, "test")
    assert dg.flags.level.name == "DEEP"
    await asyncio.sleep(0.5)  # the override expires by itself
    assert dg.flags.level.name == "SHALLOW"
    reasons = [f.reason for f in await svc.db.run(lambda c_: audit.recent(c_, 10))]
    assert any(r.startswith("manual override for 3600s") for r in reasons)
    assert "manual override cleared (auto)" in reasons


TOML = """
data_dir = "{data}"
models_dir = "{models}"
[[models]]
name = "big"
upstream = "gpt-big"
base_url = "{url}"
input_usd_per_1m = 2.5
output_usd_per_1m = 10.0
[[models]]
name = "small"
upstream = "gpt-small"
base_url = "{url}"
input_usd_per_1m = 0.15
output_usd_per_1m = 0.6
[degrade]
[[degrade.levels]]
name = "deep"
models = {{ big = "big" }}
[[degrade.levels]]
name = "shallow"
models = {{ big = "small" }}
[[degrade.alarms]]
metric = "spend_usd_per_hour"
threshold = 5.0
recover_below = 2.0
"""


def test_cli_mode_set_show_auto_and_log(tmp_path: Path, fake_upstream: FakeUpstream,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import MODELS_DIR

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(TOML.format(data=tmp_path / "data", models=MODELS_DIR,
                               url=fake_upstream.base_url))
    cli = build_cli()
    run = CliRunner().invoke
    r = run(cli, ["-c", str(cfg), "mode", "set", "shallow", "--for", "2h"])
    assert r.exit_code == 0, r.output
    assert "SHALLOW" in r.output
    r = run(cli, ["-c", str(cfg), "mode", "show", "--json"])
    assert r.exit_code == 0, r.output
    import json

    status = json.loads(r.output)
    assert status["mode"] == "SHALLOW" and status["override"]["actor"].startswith("cli")
    assert status["override"]["until"] > time.time() + 7000
    assert run(cli, ["-c", str(cfg), "mode", "set", "turbo"]).exit_code == 1
    r = run(cli, ["-c", str(cfg), "mode", "auto"])
    assert r.exit_code == 0 and "DEEP" in r.output
    r = run(cli, ["-c", str(cfg), "mode", "log", "--json"])
    reasons = [f["reason"] for f in json.loads(r.output)]
    assert reasons == ["manual override cleared (auto)", "manual override for 7200s"]
    bad = cfg.read_text().replace('models = { big = "small" }', 'models = { big = "gpt-9" }')
    cfg.write_text(bad)
    r = run(cli, ["-c", str(cfg), "mode", "show"])
    assert r.exit_code == 1 and "degrade.levels[1] (shallow).models.big" in r.output


@pytest.mark.services
async def test_flip_reaches_a_second_replica_sharing_valkey_within_a_second(
    tmp_path: Path, fake_upstream: FakeUpstream, redis_clean_url: str,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    apps = []
    for i in range(2):
        s = dg_settings(tmp_path / f"r{i}", fake_upstream, auth_required=False,
                        kv_url=redis_clean_url, database_url=f"sqlite:///{tmp_path}/shared.db")
        svc = build_services(s)
        apps.append((create_app(s, services=svc), svc))
    (app_a, a), (app_b, b) = apps
    async with app_a.router.lifespan_context(app_a), app_b.router.lifespan_context(app_b):
        transport = httpx.ASGITransport(app=app_b, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as cb:
            assert (await cb.post("/v1/chat/completions", json=body())).headers[
                "x-keel-mode"] == "DEEP"
            t0 = time.perf_counter()
            await a.get(Degrader).set_mode("shallow", 60, "replica-a")
            while b.get(Degrader).flags.level.name != "SHALLOW":
                assert time.perf_counter() - t0 < 1.0, "replica b did not see the flip in 1 s"
                await asyncio.sleep(0.01)
            seen_s = time.perf_counter() - t0
            r = await cb.post("/v1/chat/completions", json=body())
            assert r.headers["x-keel-mode"] == "SHALLOW"
            assert fake_upstream.calls[-1]["body"]["model"] == "gpt-small"
            # traffic on both replicas adds up in the shared window
            await burst(cb, 3)
            await a.get(Degrader).meter.flush()
            await b.get(Degrader).meter.flush()
            totals = await a.get(Degrader).meter.totals(60)
            assert totals["inv"]["*"] == 5
    assert seen_s < 1.0


async def test_console_mode_page_shows_mode_alarms_and_flips(gw: Any) -> None:
    c, svc = gw
    await svc.get(Degrader).set_mode("shallow", 60, "console-test")
    r = await c.get("/console/mode")
    assert r.status_code == 200
    assert "Current mode: <strong>SHALLOW</strong>" in r.text
    assert "console-test" in r.text and 'id="timeline"' in r.text
    assert "invocations_per_minute:global" in r.text
