"""Feedback capture bound to the request log, over real HTTP routes and SQLite (the
answers come from the scripted fake upstream: these tests are about keel's own logic)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.config import Settings
from keel.gateway.services import Services

from fakes import FakeUpstream


@pytest.fixture
def settings(tmp_path: Path, fake_upstream: FakeUpstream,
             monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, fake_upstream,
                      tuning={"enabled": True, "auto_train": False,
                              "max_correction_chars": 200})
    s.request_log.flush_interval_s = 0.02
    return s


@pytest.fixture
def services(settings: Settings) -> Services:
    return build_services(settings)


@pytest.fixture
async def client(settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            yield c


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def answer(client: httpx.AsyncClient, key: str, text: str = "what port?") -> str:
    r = await client.post("/v1/chat/completions", headers=auth(key), json={
        "model": "fake-gpt", "messages": [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r.headers["x-keel-request-id"]


async def test_fake_llm_correction_is_trainable_and_one_vote_per_key(
        client: httpx.AsyncClient, services: Services):
    key = services.keys.create("acme", agent="bot").secret
    rid = await answer(client, key)  # rated at once: the log may not be flushed yet
    r = await client.post("/v1/feedback", headers=auth(key),
                          json={"request_id": rid, "rating": -1, "correction": "8080"})
    assert r.status_code == 201, r.text
    assert r.json()["trainable"] is True and r.json()["model"] == "fake-gpt"
    # the same key votes again: the vote is replaced, not added
    r = await client.post("/v1/feedback", headers=auth(key),
                          json={"request_id": rid, "rating": "down"})
    assert r.status_code == 200
    body = r.json()
    assert body["trainable"] is False and "correction" in body["note"]
    other = services.keys.create("acme", agent="other").secret
    r = await client.post("/v1/feedback", headers=auth(other),
                          json={"request_id": rid, "rating": "up", "comment": "fine"})
    assert r.status_code == 201
    r = await client.get("/v1/feedback", headers=auth(key))
    rows = r.json()["data"]
    assert len(rows) == 2
    assert {(x["rating"], x["trainable"]) for x in rows} == {(-1, False), (1, False)}
    r = await client.get("/v1/feedback?rating=down", headers=auth(key))
    assert [x["rating"] for x in r.json()["data"]] == [-1]


async def test_fake_llm_feedback_on_someone_elses_or_unknown_request_is_404(
        client: httpx.AsyncClient, services: Services):
    acme = services.keys.create("acme").secret
    globex = services.keys.create("globex").secret
    rid = await answer(client, acme)
    for key, req in ((globex, rid), (acme, "req_does_not_exist")):
        r = await client.post("/v1/feedback", headers=auth(key),
                              json={"request_id": req, "rating": -1, "correction": "x"})
        assert r.status_code == 404, r.text
        assert r.json()["error"]["param"] == "request_id"
    # the body's completion id instead of keel's request id: the 404 says which to send
    r = await client.post("/v1/feedback", headers=auth(acme), json={
        "request_id": "chatcmpl-0123abcd", "rating": -1, "correction": "x"})
    assert r.status_code == 404 and "x-keel-request-id" in r.text
    assert "completion's own id" in r.json()["error"]["message"]
    # globex sees none of acme's feedback
    await client.post("/v1/feedback", headers=auth(acme),
                      json={"request_id": rid, "rating": -1, "correction": "8080"})
    assert (await client.get("/v1/feedback", headers=auth(globex))).json()["data"] == []


@pytest.mark.parametrize(("body", "param"), [
    ({"rating": -1, "correction": "x"}, "request_id"),
    ({"request_id": "R", "rating": 0}, "rating"),
    ({"request_id": "R", "rating": True}, "rating"),
    ({"request_id": "R", "rating": -1, "correction": "   "}, "correction"),
    ({"request_id": "R", "rating": -1, "correction": "x" * 201}, "correction"),
    ({"request_id": "R", "rating": -1, "correction": 5}, "correction"),
    ({"request_id": "R", "rating": 1, "correction": "better"}, "correction"),
])
async def test_bad_feedback_is_a_400_naming_the_field(
        client: httpx.AsyncClient, services: Services, body: dict, param: str):
    key = services.keys.create("acme").secret
    if body.get("request_id") == "R":
        body = {**body, "request_id": await answer(client, key)}
    r = await client.post("/v1/feedback", headers=auth(key), json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert (await client.get("/v1/feedback", headers=auth(key))).json()["data"] == []


async def test_a_wrong_typed_request_id_and_unknown_fields_are_named(
        client: httpx.AsyncClient, services: Services):
    key = services.keys.create("acme").secret
    r = await client.post("/v1/feedback", headers=auth(key),
                          json={"request_id": 5, "rating": -1, "correction": "x"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "request_id" and "must be a string" in err["message"]
    rid = await answer(client, key)
    r = await client.post("/v1/feedback", headers=auth(key), json={
        "request_id": rid, "rating": -1, "correction": "8080", "tenant": "globex"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "tenant" and "`tenant`" in err["message"]
    assert (await client.get("/v1/feedback", headers=auth(key))).json()["data"] == []


async def test_a_huge_correction_is_a_413_naming_the_setting_that_limits_it(
        client: httpx.AsyncClient, services: Services):
    key = services.keys.create("acme").secret
    rid = await answer(client, key)
    r = await client.post("/v1/feedback", headers=auth(key),
                          json={"request_id": rid, "rating": -1, "correction": "x" * 2_000_000})
    assert r.status_code == 413, r.text
    assert "tuning.max_correction_chars" in r.json()["error"]["message"]
    assert (await client.get("/v1/feedback", headers=auth(key))).json()["data"] == []


async def test_apps_can_require_a_correction_with_every_thumbs_down(
        client: httpx.AsyncClient, services: Services, settings: Settings):
    settings.tuning.require_correction = True
    key = services.keys.create("acme").secret
    rid = await answer(client, key)
    r = await client.post("/v1/feedback", headers=auth(key),
                          json={"request_id": rid, "rating": -1})
    assert r.status_code == 400
    assert "requires a `correction`" in r.json()["error"]["message"]


async def test_a_response_names_the_serving_version(
        client: httpx.AsyncClient, services: Services):
    key = services.keys.create("acme").secret
    r = await client.post("/v1/chat/completions", headers=auth(key), json={
        "model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]})
    # upstream models are not tuned here: no version header
    assert "x-keel-model-version" not in r.headers


async def test_durable_round_with_too_few_corrections_fails_clearly_and_serves_nothing_new(
        client: httpx.AsyncClient, services: Services):
    from keel.errors import InvalidRequest
    from keel.tuning.loop import TuningLoop
    from keel.tuning.registry import VersionRegistry

    loop = services.get(TuningLoop)
    with pytest.raises(InvalidRequest, match="not a local chat model"):
        await loop.start_round("fake-gpt")
    handle = await loop.start_round("gemma-3-270m")  # a DBOS workflow on the job runtime
    out = await handle.get_result()
    assert out["status"] == "failed"
    assert "0 distinct trainable corrections" in out["reason"]
    registry = services.get(VersionRegistry)
    assert await registry.list() == []
    assert await registry.serving("gemma-3-270m") is None
