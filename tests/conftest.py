"""Shared fixtures: settings in a temp data dir, a gateway app, a scripted fake upstream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import onnxruntime  # noqa: F401  (native runtimes load on the main thread, before any worker)
import pytest

from keel.app import build_services, create_app
from keel.config import Settings, load_settings
from keel.gateway.services import Services

from fakes import FakeUpstream

pytest_plugins = ["services"]

REPO = Path(__file__).resolve().parent.parent
# One shared model dir: the GGUF and the embedding graph are built once, not per test.
MODELS_DIR = os.environ.get("KEEL_TEST_MODEL_DIR", str(REPO / ".keel" / "models"))


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


def make_settings(tmp_path: Path, upstream: FakeUpstream | None = None, **kw: Any) -> Settings:
    models = []
    if upstream is not None:
        models.append({
            "name": "fake-gpt", "provider": "openai", "upstream": "gpt-4o-mini",
            "base_url": upstream.base_url, "api_key": "sk-upstream-secret",
            "input_usd_per_1m": 0.15, "output_usd_per_1m": 0.6,
        })
    overrides: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "models": models,
                                 "models_dir": MODELS_DIR}
    overrides.update(kw)
    return load_settings(None, **overrides)


@pytest.fixture
def settings(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray keel.toml from the working directory
    s = make_settings(tmp_path, fake_upstream)
    s.request_log.flush_interval_s = 0.02
    return s


@pytest.fixture
def services(settings: Settings) -> Services:
    return build_services(settings)


@pytest.fixture
def admin_key(services: Services) -> str:
    return services.keys.create("acme", admin=True).secret


@pytest.fixture
def user_key(services: Services) -> str:
    return services.keys.create("acme", agent="bot-1").secret


@pytest.fixture
async def client(settings: Settings, services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            yield c
