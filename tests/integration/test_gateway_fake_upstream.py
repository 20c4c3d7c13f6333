"""Gateway behaviour against a scripted fake OpenAI upstream on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from keel.config import Settings
from keel.gateway.services import Services

from fakes import FakeUpstream

CHAT = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def logged(services: Services, at_least: int = 1) -> list[dict]:
    """Rows of the request log (waits briefly: streams are logged when they close)."""
    from keel.metering.request_log import LogFilter, query_requests

    for _ in range(100):
        await services.request_log.flush()
        rows = await services.db.run(lambda c: query_requests(c, LogFilter()))
        if len(rows) >= at_least:
            return rows
        await asyncio.sleep(0.02)
    return rows


async def test_chat_non_stream_meters_cost_and_logs(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["choices"][0]["message"]["content"] == fake_upstream.reply
    assert data["model"] == "fake-gpt"
    # upstream got its own model name and key, never the client's key
    call = fake_upstream.calls[-1]
    assert call["body"]["model"] == "gpt-4o-mini"
    assert call["headers"]["Authorization"] == "Bearer sk-upstream-secret"
    expected = (11 * 0.15 + 7 * 0.6) / 1e6
    assert float(r.headers["x-keel-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    rows = await logged(services)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == r.headers["x-keel-request-id"]
    # the name OpenAI's SDKs read for response.request_id / APIError.request_id
    assert r.headers["x-request-id"] == row["id"]
    assert (row["tenant"], row["agent"], row["status"]) == ("acme", "bot-1", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 7)
    assert row["cost_usd"] == pytest.approx(expected)
    assert row["response_text"] == fake_upstream.reply
    assert "hi" in row["request_body"]


async def test_chat_stream_sse_and_usage(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    body = {**CHAT, "stream": True}
    text, events, done = "", 0, False
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=auth(user_key)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            done = done or line == "data: [DONE]"
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                events += 1
                for c in chunk["choices"]:
                    text += c["delta"].get("content") or ""
        assert done
    assert text.strip() == fake_upstream.reply
    assert events >= len(fake_upstream.reply.split())
    rows = await logged(services)
    assert rows[0]["stream"] and rows[0]["completion_tokens"] == 7
    assert rows[0]["ttft_ms"] is not None
    assert rows[0]["response_text"].strip() == fake_upstream.reply


async def test_missing_or_bad_key_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401
    assert "keel keys create" in r.json()["error"]["message"]
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth("keel_nope"))
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


async def test_revoked_key_stops_working(
    client: httpx.AsyncClient, services: Services
) -> None:
    new = services.keys.create("acme")
    assert (await client.get("/v1/models", headers=auth(new.secret))).status_code == 200
    services.keys.revoke(new.info.id)
    assert (await client.get("/v1/models", headers=auth(new.secret))).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "code", "needle"),
    [
        (b"{not json", 400, "malformed_json", "not valid JSON"),
        (b"[1,2]", 400, "malformed_json", "JSON object"),
        (b"", 400, "malformed_json", "empty"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400,
         "missing_field", "'model'"),
        (json.dumps({"model": "fake-gpt"}).encode(), 400, "missing_field", "'messages'"),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(),
         404, "model_not_found", "fake-gpt"),
        (json.dumps({"model": 5, "messages": []}).encode(), 400, "wrong_type", "string"),
        (json.dumps({"model": "fake-gpt", "messages": "hi"}).encode(), 400, "wrong_type",
         "array"),
        (json.dumps({"model": "fake-gpt", "messages": [{"role": "wizard", "content": "x"}]})
         .encode(), 400, "invalid_request", "role"),
        (json.dumps({"model": "fake-gpt", "messages": [{"role": "user", "content": 3}]})
         .encode(), 400, "wrong_type", "content"),
        (json.dumps({**CHAT, "max_tokens": "ten"}).encode(), 400, "wrong_type", "max_tokens"),
        (json.dumps({**CHAT, "max_tokens": 0}).encode(), 400, "invalid_request", ">= 1"),
        (json.dumps({**CHAT, "temperature": 9}).encode(), 400, "invalid_request", "between"),
        (json.dumps({**CHAT, "stream": "yes"}).encode(), 400, "wrong_type", "boolean"),
        (json.dumps({"model": "all-minilm-l6-v2", "messages": [{"role": "user",
                                                                "content": "x"}]}).encode(),
         400, "invalid_request", "embedding model"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    client: httpx.AsyncClient, user_key: str, services: Services,
    body: bytes, status: int, code: str, needle: str,
) -> None:
    r = await client.post("/v1/chat/completions", content=body,
                          headers={**auth(user_key), "content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert needle in err["message"]


async def test_oversized_body_is_413(
    client: httpx.AsyncClient, user_key: str, services: Services
) -> None:
    limit = services.settings.server.max_body_bytes
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (limit + 10)}]}
    r = await client.post("/v1/chat/completions", json=big, headers=auth(user_key))
    assert r.status_code == 413
    assert "max_body_bytes" in r.json()["error"]["message"]

    async def chunked():  # no content-length: the limit still holds while streaming in
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    r = await client.post("/v1/chat/completions", content=chunked(), headers=auth(user_key))
    assert r.status_code == 413


async def test_upstream_retries_then_succeeds(
    client: httpx.AsyncClient, user_key: str, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_first = 2
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    assert r.status_code == 200
    assert len(fake_upstream.calls) == 3


async def test_upstream_4xx_is_relayed_as_client_error_and_logged(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.status = 422
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "upstream_rejected"
    assert len(fake_upstream.calls) == 1  # 4xx are not retried
    rows = await logged(services)
    assert rows[0]["status"] == 400 and rows[0]["error_code"] == "upstream_rejected"


async def test_unreachable_upstream_is_502_not_500(
    client: httpx.AsyncClient, user_key: str, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.stop()
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    assert r.status_code == 502
    assert "cannot reach upstream" in r.json()["error"]["message"]


async def test_models_health_metrics(
    client: httpx.AsyncClient, user_key: str
) -> None:
    r = await client.get("/v1/models", headers=auth(user_key))
    ids = {m["id"] for m in r.json()["data"]}
    assert {"fake-gpt", "gemma-3-270m", "all-minilm-l6-v2"} <= ids
    assert (await client.get("/v1/models/fake-gpt", headers=auth(user_key))).json()["id"] == \
        "fake-gpt"
    assert (await client.get("/v1/models/nope", headers=auth(user_key))).status_code == 404
    assert (await client.get("/healthz")).json()["status"] == "ok"
    await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    text = (await client.get("/metrics")).text
    assert 'keel_requests_total{model="fake-gpt",route="chat",status="200"} 1.0' in text
    assert "keel_cost_usd_total" in text


async def test_unknown_route_and_method_are_json_errors(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await client.get("/v1/chat/completions")
    assert r.status_code == 405


async def test_admin_endpoints_need_admin(
    client: httpx.AsyncClient, user_key: str, admin_key: str
) -> None:
    r = await client.get("/v1/admin/keys", headers=auth(user_key))
    assert r.status_code == 403
    assert r.headers["x-keel-request-id"] == r.headers["x-request-id"]  # every answer has one
    r = await client.post("/v1/admin/keys", json={"tenant": "beta"}, headers=auth(admin_key))
    assert r.status_code == 201
    new = r.json()
    assert new["key"].startswith("keel_") and new["tenant"] == "beta"
    listed = (await client.get("/v1/admin/keys", headers=auth(admin_key))).json()["data"]
    assert all("key_hash" not in k and "key" not in k for k in listed)
    r = await client.post("/v1/admin/keys", json={"tenant": 3}, headers=auth(admin_key))
    assert r.status_code == 400
    r = await client.post("/v1/admin/keys", json={"tenant": "*"}, headers=auth(admin_key))
    assert r.status_code == 400 and "every tenant" in r.json()["error"]["message"]
    r = await client.delete(f"/v1/admin/keys/{new['id']}", headers=auth(admin_key))
    assert r.status_code == 200
    r = await client.delete(f"/v1/admin/keys/{new['id']}", headers=auth(admin_key))
    assert r.status_code == 404


async def test_concurrent_requests_all_logged(
    client: httpx.AsyncClient, user_key: str, services: Services
) -> None:
    rs = await asyncio.gather(*[
        client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
        for _ in range(40)
    ])
    assert all(r.status_code == 200 for r in rs)
    rows = await logged(services, 40)
    assert len(rows) == 40
    assert len({r["id"] for r in rows}) == 40


async def test_completions_endpoint(
    client: httpx.AsyncClient, user_key: str, fake_upstream: FakeUpstream
) -> None:
    r = await client.post("/v1/completions", json={"model": "fake-gpt", "prompt": "Once"},
                          headers=auth(user_key))
    assert r.status_code == 200
    r = await client.post("/v1/completions", json={"model": "fake-gpt", "prompt": 4},
                          headers=auth(user_key))
    assert r.status_code == 400 and "prompt" in r.json()["error"]["message"]


async def test_admin_request_log_api(
    client: httpx.AsyncClient, user_key: str, admin_key: str
) -> None:
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    rid = r.headers["x-keel-request-id"]
    rows = (await client.get("/v1/admin/requests", headers=auth(admin_key))).json()["data"]
    assert [row["id"] for row in rows] == [rid]
    one = await client.get(f"/v1/admin/requests/{rid}", headers=auth(admin_key))
    assert one.status_code == 200 and one.json()["tenant"] == "acme"
    assert (await client.get("/v1/admin/requests/nope", headers=auth(admin_key))).status_code \
        == 404
    bad = await client.get("/v1/admin/requests", params={"since": "yesterday"},
                           headers=auth(admin_key))
    assert bad.status_code == 400 and "since" in bad.json()["error"]["message"]


async def test_upstream_short_retry_after_is_waited_out(
    client: httpx.AsyncClient, user_key: str, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_first, fake_upstream.fail_status = 1, 429
    fake_upstream.retry_after = "1"
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    assert r.status_code == 200, r.text
    first, second = fake_upstream.calls
    assert second["at"] - first["at"] >= 0.95  # not keel's own ~0.1 s backoff


async def test_upstream_long_retry_after_is_not_retried_and_reaches_the_client(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.status, fake_upstream.retry_after = 429, "7"
    r = await client.post("/v1/chat/completions", json=CHAT, headers=auth(user_key))
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert r.headers["retry-after"] == "7"  # what OpenAI's SDKs back off by
    assert len(fake_upstream.calls) == 1


def test_retry_after_header_forms() -> None:
    from keel.providers.openai_compat import retry_after

    assert retry_after({"retry-after": "2.5"}) == 2.5
    assert retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after({"retry-after": "inf"}) is None
    assert retry_after({"retry-after": "soon"}) is None
    assert retry_after({}) is None


async def test_client_disconnect_cancels_non_streamed_request(
    settings: Settings, services: Services, user_key: str, fake_upstream: FakeUpstream
) -> None:
    """A client that gives up (OpenAI(timeout=...)) stops the upstream call: no waiting
    out the upstream, no retry, and the log says 499 like a dropped stream."""
    from keel.app import create_app

    fake_upstream.delay_s = 3.0
    app = create_app(settings, services=services)
    body = json.dumps(CHAT).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []
    gave_up: list[float] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        # the client gives up once the upstream is working on the request (on a loaded
        # machine the pipeline before it can take longer than any fixed delay)
        deadline = asyncio.get_running_loop().time() + 30
        while not fake_upstream.calls and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        gave_up.append(asyncio.get_running_loop().time())
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5555),
        "server": ("keel", 80),
        "headers": [(b"host", b"keel"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"authorization", f"Bearer {user_key}".encode())],
    }
    loop = asyncio.get_running_loop()
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
        took = loop.time() - gave_up[0]
    assert took < 2.0  # did not wait out the upstream's 3 s answer
    rows = await logged(services)
    assert rows[0]["status"] == 499
    await asyncio.sleep(0.5)
    assert len(fake_upstream.calls) == 1  # the upstream saw the request once
