"""The cache stage through the gateway, against a scripted fake upstream on 127.0.0.1.

Real MiniLM embeddings, the real usearch index and SQLite KV; the fake upstream only counts
calls, so every hit is proven by the upstream NOT being called.
"""

from __future__ import annotations

import json

import httpx
import pytest

from keel.cache.settings import NamespaceSettings
from keel.cache.stage import CacheStage
from keel.config import Settings
from keel.gateway.services import Services

from fakes import FakeUpstream


def chat(text: str, **kw: object) -> dict:
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": text}], **kw}


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def drained(services: Services) -> None:
    await services.get(CacheStage).drain()


async def ask(client: httpx.AsyncClient, key: str, text: str, **headers: str) -> httpx.Response:
    r = await client.post("/v1/chat/completions", json=chat(text), headers=auth(key, **headers))
    assert r.status_code == 200, r.text
    return r


async def test_exact_then_semantic_hit_skip_the_upstream(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    r = await ask(client, user_key, "How do I reset my password?")
    assert r.headers["x-keel-cache"] == "miss"
    await drained(services)
    r = await ask(client, user_key, "How do I reset my password?")
    assert r.headers["x-keel-cache"] == "hit"
    assert r.headers["x-keel-cache-layer"] == "exact"
    assert r.json()["choices"][0]["message"]["content"] == fake_upstream.reply
    assert r.headers["x-keel-cost-usd"] == "0.00000000"
    assert float(r.headers["x-keel-saved-usd"]) > 0
    r = await ask(client, user_key, "how do I reset my password")
    assert r.headers["x-keel-cache"] == "hit", r.headers
    assert r.headers["x-keel-cache-layer"] == "semantic"
    assert float(r.headers["x-keel-cache-similarity"]) >= 0.95
    assert len(fake_upstream.calls) == 1


@pytest.mark.parametrize("cached,asked", [
    ("How do I reset my password?", "How do I reset my database?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("Refund the $50 order please", "Refund the $500 order please"),
    ("Is it safe to delete the logs folder?", "Is it not safe to delete the logs folder?"),
])
async def test_verifier_refuses_near_misses(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream,
    cached: str, asked: str,
) -> None:
    await ask(client, user_key, cached)
    await drained(services)
    r = await ask(client, user_key, asked)
    assert r.headers["x-keel-cache"] == "miss"
    assert len(fake_upstream.calls) == 2


async def test_balanced_default_serves_rewordings_strict_namespace_does_not(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream,
    settings: Settings,
) -> None:
    settings.cache.namespaces["exacting"] = NamespaceSettings(profile="strict")
    for ns in ("default", "exacting"):
        h = {"x-keel-cache-namespace": ns}
        await ask(client, user_key, "How can I disable email notifications?", **h)
        await drained(services)
        r = await ask(client, user_key, "How do I turn off email notifications?", **h)
        if ns == "default":
            assert r.headers["x-keel-cache"] == "hit", r.headers
            assert r.headers["x-keel-cache-layer"] == "semantic"
        else:
            assert r.headers["x-keel-cache"] == "miss"
            assert "content differs" in r.headers["x-keel-cache-rejected"]
    assert len(fake_upstream.calls) == 3
    r = await ask(client, user_key, "How can I enable email notifications?")
    assert r.headers["x-keel-cache"] == "miss"  # an opposite is never served
    assert "opposites" in r.headers["x-keel-cache-rejected"]


async def test_tenants_never_share_entries(
    client: httpx.AsyncClient, services: Services, fake_upstream: FakeUpstream
) -> None:
    a = services.keys.create("tenant-a").secret
    b = services.keys.create("tenant-b").secret
    await ask(client, a, "What is our refund policy?")
    await drained(services)
    r = await ask(client, b, "What is our refund policy?")
    assert r.headers["x-keel-cache"] == "miss"
    assert len(fake_upstream.calls) == 2
    r = await ask(client, a, "What is our refund policy?")
    assert r.headers["x-keel-cache"] == "hit"


async def test_partition_includes_system_prompt_and_params(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    base = chat("Summarise the plot of Hamlet.")
    await client.post("/v1/chat/completions", json=base, headers=auth(user_key))
    await drained(services)
    variants = [
        {**base, "temperature": 0.9},
        {**base, "messages": [{"role": "system", "content": "Answer in French."},
                              *base["messages"]]},
        {**base, "max_tokens": 5},
    ]
    for v in variants:
        r = await client.post("/v1/chat/completions", json=v, headers=auth(user_key))
        assert r.headers["x-keel-cache"] == "miss", v
    r = await client.post("/v1/chat/completions", json={**base, "user": "u1"},
                          headers=auth(user_key))
    assert r.headers["x-keel-cache"] == "hit"  # `user` does not change the answer by default


async def test_an_end_users_question_about_their_own_data_is_never_shared(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    """With a `user` id, "Where is my order?" bypasses (its answer differs per end user);
    a how-to question that mentions "my" is still served from the cache."""
    async def as_user(user: str, text: str) -> httpx.Response:
        r = await client.post("/v1/chat/completions", json={**chat(text), "user": user},
                              headers=auth(user_key))
        assert r.status_code == 200, r.text
        return r

    first = await as_user("alice", "What is the tracking number of my latest order?")
    await drained(services)
    for user in ("alice", "bob"):
        r = await as_user(user, "What is the tracking number of my latest order?")
        assert r.headers["x-keel-cache"] == "bypass", r.headers
    assert first.headers["x-keel-cache"] == "bypass"
    await as_user("alice", "How do I change my password?")
    await drained(services)
    r = await as_user("bob", "How do I change my password?")
    assert r.headers["x-keel-cache"] == "hit"
    assert len(fake_upstream.calls) == 4


async def test_bypass_header_and_bad_control_values(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    await ask(client, user_key, "What's the weather like on Mars?")
    await drained(services)
    r = await ask(client, user_key, "What's the weather like on Mars?",
                  **{"x-keel-cache": "bypass"})
    assert r.headers["x-keel-cache"] == "bypass"
    assert len(fake_upstream.calls) == 2
    r = await client.post("/v1/chat/completions", json=chat("hi"),
                          headers=auth(user_key, **{"x-keel-cache": "sometimes"}))
    assert r.status_code == 400
    assert "bypass" in r.json()["error"]["message"]
    r = await client.post("/v1/chat/completions", json=chat("hi"),
                          headers=auth(user_key, **{"x-keel-cache-namespace": "nope"}))
    assert r.status_code == 400
    assert "unknown cache namespace 'nope'" in r.json()["error"]["message"]


async def test_streamed_miss_is_stored_and_replayed_as_sse(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream
) -> None:
    body = chat("Tell me a fun fact about octopuses.", stream=True,
                stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=auth(user_key)) as r:
        assert r.headers["x-keel-cache"] == "miss"
        first = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    await drained(services)
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=auth(user_key)) as r:
        assert r.headers["x-keel-cache"] == "hit"
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and first[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in chunks if c["choices"])
    assert text.strip() == fake_upstream.reply
    assert chunks[-1]["usage"]["completion_tokens"] == fake_upstream.completion_tokens
    assert len(fake_upstream.calls) == 1
    # the non-streaming form of the same question is a different request shape but the same
    # answer: served from the same entry
    r = await ask(client, user_key, "Tell me a fun fact about octopuses.")
    assert r.headers["x-keel-cache"] == "hit"


async def test_flush_namespace_via_admin_api(
    client: httpx.AsyncClient, user_key: str, admin_key: str, services: Services,
    fake_upstream: FakeUpstream,
) -> None:
    await ask(client, user_key, "Which plan includes SSO?")
    await drained(services)
    # a misspelt optional field is refused, never ignored: without it the flush would
    # empty every tenant's entries
    r = await client.post("/v1/admin/cache/flush",
                          json={"namespace": "default", "tennant": "acme"},
                          headers=auth(admin_key))
    assert r.status_code == 400 and r.json()["error"]["param"] == "tennant", r.text
    assert (await ask(client, user_key, "Which plan includes SSO?")).headers[
        "x-keel-cache"] == "hit"
    r = await client.post("/v1/admin/cache/flush", json={"namespace": "default"},
                          headers=auth(admin_key))
    assert r.status_code == 200, r.text
    assert r.json()["removed"] >= 1
    r = await ask(client, user_key, "Which plan includes SSO?")
    assert r.headers["x-keel-cache"] == "miss"
    r = await client.post("/v1/admin/cache/flush", json={"namespace": "nope"},
                          headers=auth(admin_key))
    assert r.status_code == 400
    # a misspelt tenant flushes nothing, and says so instead of "0 removed"
    r = await client.post("/v1/admin/cache/flush",
                          json={"namespace": "default", "tenant": "acmee"},
                          headers=auth(admin_key))
    assert r.status_code == 404 and "no tenant 'acmee'" in r.json()["error"]["message"]
    r = await client.post("/v1/admin/cache/flush", json={"namespace": "default"},
                          headers=auth(user_key))
    assert r.status_code == 403


async def test_stats_record_hits_and_savings(
    client: httpx.AsyncClient, user_key: str, admin_key: str, services: Services,
    fake_upstream: FakeUpstream,
) -> None:
    for _ in range(3):
        await ask(client, user_key, "What are your opening hours?")
        await drained(services)
    r = await client.get("/v1/admin/cache/stats", headers=auth(admin_key))
    assert r.status_code == 200
    s = r.json()
    assert s["hit_exact"] == 2 and s["miss"] == 1 and s["stored"] == 1
    assert s["usd_saved"] > 0 and s["tokens_saved"] == 2 * (
        fake_upstream.prompt_tokens + fake_upstream.completion_tokens)
    assert 0.6 < s["hit_rate"] < 0.7


async def test_vector_backend_outage_degrades_to_miss(
    tmp_path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import make_settings
    from keel.app import build_services, create_app

    from fakes import free_port as dead_port

    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, fake_upstream,
                             cache={"vector_url": f"redis://127.0.0.1:{dead_port()}/0"})
    services = build_services(settings)
    key = services.keys.create("acme").secret
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            for _ in range(2):
                r = await ask(c, key, "Is the cache backend down?")
                assert r.headers["x-keel-cache"] in ("miss", "hit")
                await drained(services)
            # the exact layer lives in the (healthy) KV: the second ask is still an exact hit
            assert r.headers["x-keel-cache"] == "hit"
            r = await ask(c, key, "is the cache backend down")
            assert r.headers["x-keel-cache"] == "miss"  # semantic layer down: a miss
            metrics = (await c.get("/metrics")).text
    assert 'keel_cache_requests_total{outcome="error"}' in metrics
    assert len(fake_upstream.calls) == 2


async def test_scripted_fake_judge_confirms_hits_strict_would_refuse_verdict_remembered(
    client: httpx.AsyncClient, user_key: str, services: Services, fake_upstream: FakeUpstream,
    settings: Settings,
) -> None:
    """keel's judge logic against a scripted fake upstream as the judge model."""
    from keel.cache.judge import Judge

    services.get(CacheStage).judge = Judge(services.models, services.kv)
    settings.cache.namespaces["judged"] = NamespaceSettings(judge="fake-gpt")
    h = {"x-keel-cache-namespace": "judged"}
    await ask(client, user_key, "How can I disable email notifications?", **h)
    await drained(services)
    fake_upstream.reply = "Yes."
    r = await ask(client, user_key, "How do I turn off email notifications?", **h)
    assert r.headers["x-keel-cache"] == "hit" and r.headers["x-keel-cache-judge"] == "yes"
    judge_call = fake_upstream.calls[-1]["body"]
    assert "same answer" in judge_call["messages"][0]["content"]
    judged = float(r.headers["x-keel-cache-judge-usd"])
    assert judged > 0 and float(r.headers["x-keel-cost-usd"]) == pytest.approx(judged, 1e-6)
    calls = len(fake_upstream.calls)
    r = await ask(client, user_key, "How do I turn off email notifications?", **h)
    assert r.headers["x-keel-cache-judge"] == "yes (remembered)"
    assert len(fake_upstream.calls) == calls  # neither the judge nor the model was called
    assert r.headers["x-keel-cost-usd"] == "0.00000000"
    fake_upstream.reply = "No"
    r = await ask(client, user_key, "How can I switch off email notifications?", **h)
    assert r.headers["x-keel-cache"] == "miss" and r.headers["x-keel-cache-judge"] == "no"
    assert "judge" in r.headers["x-keel-cache-rejected"]
    r = await ask(client, user_key, "How can I disable email notifications?", **h)
    assert r.headers["x-keel-cache-layer"] == "exact" and "x-keel-cache-judge" not in r.headers
