"""Hostile input against the gateway: deep JSON, impossible upstream usage, unwritable
log records, unbounded query parameters. Upstream answers come from the scripted fake
upstream (the tests are about keel's own handling of them)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from keel.gateway.context import Principal, RequestContext, Usage
from keel.gateway.services import Services

from fakes import FakeUpstream

CHAT = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}


def chat(text: str = "hi", **kw: object) -> dict:
    """A chat body; distinct texts keep the answer cache out of the way."""
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": text}], **kw}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def deep(levels: int) -> object:
    v: object = "x"
    for _ in range(levels):
        v = {"a": v}
    return v


async def rows(services: Services) -> list[dict]:
    from keel.metering.request_log import LogFilter, query_requests

    await services.request_log.flush()
    return await services.db.run(lambda c: query_requests(c, LogFilter(limit=1000)))


# -- deep JSON is refused at parse time, before anything runs or is logged ---------------


@pytest.mark.parametrize("stream", [False, True])
async def test_deep_json_is_400_before_the_model_runs(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream,
    stream: bool,
) -> None:
    body = {**CHAT, "stream": stream, "metadata": deep(300)}
    r = await client.post("/v1/chat/completions", json=body, headers=auth(user_key))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "json_too_deep"
    assert "64 levels" in err["message"]
    assert fake_upstream.calls == []
    # moderately nested JSON (a tool schema, metadata) is still fine
    ok = await client.post("/v1/chat/completions", json={**CHAT, "metadata": deep(20)},
                           headers=auth(user_key))
    assert ok.status_code == 200, ok.text
    assert len(await rows(services)) == 1


async def test_deep_json_on_admin_routes_is_400(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    r = await client.post("/v1/admin/keys", json={"tenant": "t", "name": deep(500)},
                          headers=auth(admin_key))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "json_too_deep"


# -- impossible upstream usage is a 502, logged; counters stay sane ---------------------


@pytest.mark.parametrize("value", [1e30, -5, "many", 2**70])
async def test_impossible_upstream_usage_is_502_and_logged(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream,
    value: object,
) -> None:
    good = [client.post("/v1/chat/completions", json=chat(f"q{i}"), headers=auth(user_key))
            for i in range(4)]
    for r in await asyncio.gather(*good):
        assert r.status_code == 200
    fake_upstream.override = {"usage": {"prompt_tokens": value, "completion_tokens": 3}}
    r = await client.post("/v1/chat/completions", json=chat("bad"), headers=auth(user_key))
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_error"
    assert "usage.prompt_tokens" in r.json()["error"]["message"]
    logged = await rows(services)
    assert len(logged) == 5
    assert sorted(row["status"] for row in logged) == [200, 200, 200, 200, 502]
    metrics = services.metrics.render().decode()
    assert "e+30" not in metrics
    tokens = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("keel_tokens_total{")]
    assert tokens and max(tokens) == 4 * 11  # prompt tokens of the four good requests


async def test_impossible_usage_in_a_stream_ends_it_with_an_error(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.override = {"usage": {"prompt_tokens": -1, "completion_tokens": 3}}
    body = {**CHAT, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=auth(user_key)) as r:
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert "upstream_error" in lines[-1]
    logged = await rows(services)
    assert [row["status"] for row in logged] == [502]


@pytest.mark.parametrize("choices", ["nope", [1, 2], [{"message": "x"}]])
async def test_malformed_upstream_choices_are_502(
    client: httpx.AsyncClient, user_key: str, fake_upstream: FakeUpstream, choices: object,
) -> None:
    fake_upstream.override = {"choices": choices}
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    if choices == [{"message": "x"}]:  # odd but harmless: no text, not an error
        assert r.status_code == 200
        return
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "upstream_error"


# -- one unwritable record never costs the rest of its batch ----------------------------


async def test_one_bad_record_does_not_drop_its_batch(
    client: httpx.AsyncClient, services: Services
) -> None:
    spec = services.models.get("fake-gpt")
    who = Principal(key_id="k", tenant="acme")
    writer = services.request_log
    for i in range(5):
        ctx = RequestContext(id=f"req_{i}", route="chat", body=dict(CHAT), model=spec,
                             principal=who, client_ip="127.0.0.1", headers={})
        # bypasses the metering stage on purpose: the writer must survive it regardless
        ctx.usage = Usage(10**30 if i == 2 else 5, 1)
        writer.submit(ctx)
    logged = await rows(services)
    assert sorted(r["id"] for r in logged) == ["req_0", "req_1", "req_3", "req_4"]
    assert writer.stats.dropped == 1
    metrics = services.metrics.render().decode()
    assert "keel_request_log_dropped_total 1.0" in metrics


async def test_unserialisable_record_is_counted_not_raised(
    client: httpx.AsyncClient, services: Services
) -> None:
    spec = services.models.get("fake-gpt")
    ctx = RequestContext(id="req_deep", route="chat", body={"m": deep(400)}, model=spec,
                         principal=Principal(key_id="k", tenant="acme"),
                         client_ip="127.0.0.1", headers={})
    services.finish(ctx)  # must not raise
    assert services.request_log.stats.dropped == 1

