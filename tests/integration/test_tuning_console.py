"""Console feedback: thumbs and a correction box on the request page (the same validation,
tenant check and upsert as ``POST /v1/feedback``, CSRF-checked) and the feedback list with
its filters. The answers come from the scripted fake upstream: this is about keel's logic."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlencode

import httpx
import pytest

from keel.config import Settings
from keel.gateway.services import Services

FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.tuning.enabled = True
    settings.tuning.auto_train = False
    settings.tuning.max_correction_chars = 200
    return settings


async def ask(client: httpx.AsyncClient, key: str) -> str:
    r = await client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "fake-gpt",
                                "messages": [{"role": "user", "content": "what port?"}]})
    assert r.status_code == 200, r.text
    return r.headers["x-keel-request-id"]


async def vote(client: httpx.AsyncClient, rid: str, csrf: str, **form: str) -> str:
    r = await client.post(f"/console/requests/{rid}/feedback", headers=FORM,
                          content=urlencode({"csrf": csrf, **form}))
    assert r.status_code == 303, r.text
    return unquote(r.headers["location"].replace("+", " "))


async def test_thumbs_and_correction_on_the_request_page_and_the_filtered_list(
        client: httpx.AsyncClient, services: Services, user_key: str) -> None:
    rid = await ask(client, user_key)
    other = await ask(client, services.keys.create("globex").secret)
    assert (await client.get(f"/console/requests/{rid}")).status_code == 303  # signed out
    login = await client.post("/console/login", content=urlencode({"api_key": user_key}),
                              headers=FORM)
    assert login.status_code == 303
    page = await client.get(f"/console/requests/{rid}")
    assert page.status_code == 200 and 'id="feedback-form"' in page.text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf is not None
    token = csrf.group(1)
    bad = await client.post(f"/console/requests/{rid}/feedback", headers=FORM,
                            content=urlencode({"csrf": "nope", "rating": "down"}))
    assert bad.status_code == 403
    # the API's rules, word for word: a thumbs-up cannot carry a correction, nor can a
    # correction be longer than the limit
    assert "thumbs-up cannot carry a correction" in await vote(
        client, rid, token, rating="up", correction="8080")
    assert "the limit is 200" in await vote(client, rid, token, rating="down",
                                            correction="x" * 201)
    assert "no request" in await vote(client, other, token, rating="down",
                                      correction="8080")  # another tenant's answer
    to = await vote(client, rid, token, rating="down", correction="<b>7420</b>",
                    comment="wrong port")
    assert "will train the model" in to
    page = await client.get(f"/console/requests/{rid}")
    assert 'id="my-vote">down' in page.text
    assert "&lt;b&gt;7420&lt;/b&gt;" in page.text and "<b>7420" not in page.text
    # stored exactly as POST /v1/feedback stores it (one vote per key, trainable)
    api = await client.get("/v1/feedback", headers={"authorization": f"Bearer {user_key}"})
    rows = api.json()["data"]
    assert [(r["request_id"], r["rating"], r["trainable"], r["correction"]) for r in rows] == [
        (rid, -1, True, "<b>7420</b>")]
    await vote(client, rid, token, rating="down")  # voting again replaces the vote
    api = await client.get("/v1/feedback", headers={"authorization": f"Bearer {user_key}"})
    assert [(r["rating"], r["trainable"]) for r in api.json()["data"]] == [(-1, False)]
    await vote(client, rid, token, rating="down", correction="7420")

    async def listed(**q: str) -> tuple[int, str]:
        r = await client.get("/console/feedback?" + urlencode(q))
        return r.status_code, r.text

    code, text = await listed()
    assert code == 200 and rid in text and other not in text
    assert rid in (await listed(rating="down", trainable="yes", model="fake-gpt"))[1]
    assert rid not in (await listed(rating="up"))[1]
    assert rid not in (await listed(trainable="no"))[1]
    assert rid not in (await listed(model="gemma-3-270m"))[1]
    assert rid not in (await listed(**{"from": "2000-01-01", "to": "2000-01-02"}))[1]
    assert rid in (await listed(**{"from": "2000-01-01"}))[1]
    code, text = await listed(**{"from": "yesterday"})
    assert code == 400 and "must be a date" in text
