"""/metrics: untrusted scrapes never see tenant names, agent names, per-tenant spend or
payees; a token or a separate listener makes a scrape trusted.

The real app over ASGI, and the separate listener over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import SecretStr

from keel.app import create_app
from keel.config import Settings
from keel.gateway.services import Services
from keel.metering.exposition import RedactedView

from fakes import free_port

CHAT = {"model": "fake-gpt", "messages": [{"role": "user", "content": "capital of France?"}]}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.tools.enabled = False
    settings.approvals.enabled = False
    return settings


async def traffic(client: httpx.AsyncClient, key: str) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT,
                          headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text


async def test_default_metrics_on_the_api_port_hide_identity(
    client: httpx.AsyncClient, user_key: str
) -> None:
    await traffic(client, user_key)
    r = await client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'keel_requests_total{model="fake-gpt",route="chat",status="200"} 1.0' in text
    assert 'keel_tokens_total{kind="prompt",model="fake-gpt",tenant="*"} 11.0' in text
    assert 'keel_cost_usd_total{model="fake-gpt",tenant="*"}' in text
    assert "acme" not in text and "bot-1" not in text


async def test_a_token_makes_scrapes_trusted_and_refuses_others(
    client: httpx.AsyncClient, settings: Settings, user_key: str
) -> None:
    settings.metrics.token = SecretStr("scrape-token-123")
    await traffic(client, user_key)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": user_key}):
        r = await client.get("/metrics", headers=headers)
        assert r.status_code == 401 and "acme" not in r.text
        assert r.headers["www-authenticate"] == "Bearer"
    r = await client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert r.status_code == 200
    assert 'keel_tokens_total{kind="prompt",model="fake-gpt",tenant="acme"} 11.0' in r.text
    settings.metrics.identity_labels = []  # the operator may hide identity from everyone
    r = await client.get("/metrics", headers={"Authorization": "Bearer scrape-token-123"})
    assert 'tenant="*"' in r.text and "acme" not in r.text


async def test_separate_listener_serves_metrics_and_the_api_port_does_not(
    services: Services, settings: Settings, user_key: str
) -> None:
    settings.metrics.port = free_port()
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as api:
            await traffic(api, user_key)
            assert (await api.get("/metrics")).status_code == 404
            async with httpx.AsyncClient() as scraper:
                r = await scraper.get(f"http://127.0.0.1:{settings.metrics.port}/metrics")
                assert r.status_code == 200
                assert 'tenant="acme"' in r.text
                settings.metrics.token = SecretStr("t0ken-for-scrapes")
                r = await scraper.get(f"http://127.0.0.1:{settings.metrics.port}/metrics")
                assert r.status_code == 401
                r = await scraper.get(f"http://127.0.0.1:{settings.metrics.port}/metrics",
                                      headers={"Authorization": "Bearer t0ken-for-scrapes"})
                assert r.status_code == 200 and 'tenant="acme"' in r.text
    with pytest.raises(httpx.ConnectError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{settings.metrics.port}/metrics")


def test_redacted_view_merges_counters_and_drops_per_tenant_gauges() -> None:
    reg = CollectorRegistry()
    spend = Counter("spend_usd", "", ["tenant", "agent", "payee"], registry=reg)
    spend.labels("acme", "bot", "0xPAYEE1").inc(2)
    spend.labels("globex", "bot", "0xPAYEE2").inc(3)
    lat = Histogram("lat_seconds", "", ["tenant"], buckets=(1.0,), registry=reg)
    lat.labels("acme").observe(0.5)
    lat.labels("globex").observe(2.0)
    level = Gauge("level", "", ["scope"], registry=reg)
    level.labels("*").set(1)
    level.labels("acme").set(3)
    text = generate_latest(RedactedView(reg, ["tenant", "agent", "payee"])).decode()
    assert 'spend_usd_total{agent="*",payee="*",tenant="*"} 5.0' in text
    assert 'lat_seconds_bucket{le="1.0",tenant="*"} 1.0' in text
    assert 'lat_seconds_count{tenant="*"} 2.0' in text
    assert 'level{scope="*"} 1.0' in text and "3.0" not in text.split("# TYPE level")[1]
    for secret in ("acme", "globex", "0xPAYEE"):
        assert secret not in text
    partial = generate_latest(RedactedView(reg, ["payee"])).decode()
    assert 'tenant="acme"' in partial and "0xPAYEE" not in partial
