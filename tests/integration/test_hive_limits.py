"""Hive authorization and limits: who may delete a task, create vs join, max_tasks, and
quotas that count the ``files`` stream and are checked before a tee's model work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.gateway.context import Principal
from keel.gateway.services import Services
from keel.hive.model import HiveQuotaExceeded
from keel.hive.service import HiveService

from fakes import FakeUpstream
from live import serve_app


@pytest.fixture
def hive_app(tmp_path: Path, fake_upstream: FakeUpstream,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Services]]:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, fake_upstream,
                             hive={"enabled": True, "quota_streams": 2, "max_tasks": 2,
                                   "poll_s": 5.0})
    svc = build_services(settings)
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, svc


@pytest.fixture
async def http(hive_app: tuple[str, Services]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hive_app[0], timeout=20) as c:
        yield c


def _h(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


async def test_hive_agent_key_cannot_delete_task(hive_app, http: httpx.AsyncClient) -> None:
    svc = hive_app[1]
    coder = svc.keys.create("acme", agent="coder").secret
    researcher = svc.keys.create("acme", agent="researcher").secret
    app = svc.keys.create("acme").secret
    await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(app))
    r = await http.post("/v1/hive/tasks/job/streams/researcher", json={"data": "x"},
                        headers=_h(researcher))
    assert r.status_code == 200
    r = await http.delete("/v1/hive/tasks/job", headers=_h(coder))
    assert r.status_code == 403 and "tenant key" in r.json()["error"]["message"]
    assert await svc.get(HiveService).read("acme", "job", "researcher")  # still there
    r = await http.delete("/v1/hive/tasks/job", headers=_h(app))
    assert r.status_code == 200 and r.json()["deleted"] is True


async def test_hive_create_joins_existing_with_200_and_max_tasks(
        hive_app, http: httpx.AsyncClient) -> None:
    app = hive_app[1].keys.create("acme").secret
    r = await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(app))
    assert r.status_code == 201
    r = await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(app))
    assert r.status_code == 200 and r.json()["name"] == "job"
    assert (await http.post("/v1/hive/tasks", json={}, headers=_h(app))).status_code == 201
    r = await http.post("/v1/hive/tasks", json={"name": "third"}, headers=_h(app))
    assert r.status_code == 429 and "max_tasks" in r.json()["error"]["message"]
    # joining an existing task is not a new one
    r = await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(app))
    assert r.status_code == 200


async def test_hive_tee_quota_checked_before_model_work(
        hive_app, http: httpx.AsyncClient, fake_upstream: FakeUpstream) -> None:
    svc = hive_app[1]
    app = svc.keys.create("acme").secret
    await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(app))
    for s in ("a", "b"):  # quota_streams = 2: full
        r = await http.post(f"/v1/hive/tasks/job/streams/{s}", json={"data": "x"},
                            headers=_h(app))
        assert r.status_code == 200
    calls = len(fake_upstream.calls)
    chat = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    r = await http.post("/v1/chat/completions", json=chat,
                        headers=_h(app, **{"x-keel-hive": "job/coder"}))
    assert r.status_code == 429, r.text
    assert "quota_streams" in r.json()["error"]["message"]
    assert "x-keel-hive" not in r.headers
    assert len(fake_upstream.calls) == calls  # no model work
    # a stream already written still tees
    r = await http.post("/v1/chat/completions", json=chat,
                        headers=_h(app, **{"x-keel-hive": "job/a"}))
    assert r.status_code == 200 and r.headers["x-keel-hive"] == "hive://job/a@1"


async def test_hive_quotas_count_files_stream_and_exact_bytes(hive_app) -> None:
    hive = hive_app[1].get(HiveService)
    p = Principal(tenant="acme", key_id="k1")
    await hive.create_task(p, "job")
    await hive.append(p, "job", "a", hive.records(p, "a", [("tokens", "héllo \"x\"\n")] * 3))
    used, _ = await hive.store.usage("acme")
    assert (await hive.current_usage("acme")).bytes == used  # counted exactly
    await hive.files.put(p, "job", "notes.md", b"hi", expect=0)
    assert "job/files" in (await hive.current_usage("acme")).streams
    # quota_streams = 2: "a" and the implicit "files" stream
    with pytest.raises(HiveQuotaExceeded, match="quota_streams"):
        await hive.append(p, "job", "b", hive.records(p, "b", [("note", "x")]))
