"""The cache's embedder comes from the model table: an OpenAI-compatible upstream here (a
scripted fake on 127.0.0.1, real HTTP), with its own vector index."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.cache.build import INDEX_NAME, index_name
from keel.cache.stage import CacheStage
from keel.config import Settings
from keel.errors import ConfigError
from keel.providers.registry import ModelRegistry
from keel.providers.upstream_embedder import UpstreamEmbedder

from fakes import FakeUpstream

EMB = {"name": "remote-emb", "provider": "openai", "kind": "embedding",
       "upstream": "text-embedding-3-small"}


def settings_with_embedder(tmp_path: Path, up: FakeUpstream, **cache: object) -> Settings:
    s = make_settings(tmp_path, up, cache={"embedder": "remote-emb", **cache})
    s.models.append(s.models[0].model_copy(update=EMB))
    return s


async def test_upstream_embedder_sorts_rows_and_normalises(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    s = settings_with_embedder(tmp_path, fake_upstream)
    reg = ModelRegistry(s)
    emb = reg.embedder_for("remote-emb")
    assert isinstance(emb, UpstreamEmbedder) and emb.dim == 0
    v = await emb.embed(["reset my password", "reset my password", "cancel my order"])
    assert v.shape == (3, 64) and emb.dim == 64
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
    assert np.allclose(v[0], v[1]) and not np.allclose(v[0], v[2])  # order kept
    sent = fake_upstream.calls[-1]["body"]
    assert sent["model"] == "text-embedding-3-small"
    await reg.openai().aclose()


def test_embedder_must_be_an_embedding_model(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    s = make_settings(tmp_path, fake_upstream)
    reg = ModelRegistry(s)
    with pytest.raises(ConfigError, match="not an embedding model"):
        reg.embedder_for("fake-gpt")
    with pytest.raises(ConfigError, match="not an embedding model"):
        reg.embedder_for("nope")
    assert reg.embedder_for("").name == "all-minilm-l6-v2"


def test_each_embedder_has_its_own_index() -> None:
    assert index_name("all-minilm-l6-v2") == INDEX_NAME
    a, b = index_name("remote-emb"), index_name("remote/emb")
    assert len({INDEX_NAME, a, b}) == 3 and a.startswith(INDEX_NAME + "-remote-emb-")


async def test_gateway_cache_uses_the_configured_embedder(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings_with_embedder(tmp_path, fake_upstream, profile="strict")
    services = build_services(s)
    key = services.keys.create("t").secret
    app = create_app(s, services=services)
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "Reset my password?"}]}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 5555)),
            base_url="http://keel") as client:
        h = {"Authorization": f"Bearer {key}"}
        r = await client.post("/v1/chat/completions", json=body, headers=h)
        assert r.headers["x-keel-cache"] == "miss"
        await services.get(CacheStage).drain()
        body["messages"][0]["content"] = "reset my password?"  # same words, other case
        r = await client.post("/v1/chat/completions", json=body, headers=h)
        assert r.headers["x-keel-cache"] == "hit" and r.headers["x-keel-cache-layer"] == "semantic"
    embeds = [c for c in fake_upstream.calls if c.get("embeddings")]
    chats = [c for c in fake_upstream.calls if not c.get("embeddings")]
    assert len(embeds) >= 2 and len(chats) == 1
    assert (tmp_path / "data" / "vectors").exists()
    assert any(index_name("remote-emb") in p.name
               for p in (tmp_path / "data" / "vectors").iterdir())
