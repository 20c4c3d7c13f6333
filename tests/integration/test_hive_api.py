"""The hive over real HTTP on 127.0.0.1: routes, SSE tail with resume, streamed appends,
and the gateway tee (a scripted fake LLM upstream: these tests are about keel's logic)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.gateway.context import Principal
from keel.gateway.services import Services
from keel.hive.service import HiveService

from fakes import FakeUpstream
from live import serve_app


@pytest.fixture
def hive_app(tmp_path: Path, fake_upstream: FakeUpstream,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Services]]:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, fake_upstream,
                             hive={"enabled": True, "quota_bytes": 200_000,
                                   "max_record_bytes": 4096, "poll_s": 5.0,
                                   "max_file_bytes": 195_000})
    svc = build_services(settings)
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, svc


@pytest.fixture
async def http(hive_app: tuple[str, Services]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hive_app[0], timeout=20) as c:
        yield c


def _keys(svc: Services) -> dict[str, str]:
    return {"researcher": svc.keys.create("acme", agent="researcher").secret,
            "coder": svc.keys.create("acme", agent="coder").secret,
            "app": svc.keys.create("acme").secret,
            "admin": svc.keys.create("ops", admin=True).secret,
            "other": svc.keys.create("globex").secret}


def _h(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


async def test_tasks_records_text_and_bad_input(hive_app, http: httpx.AsyncClient) -> None:
    k = _keys(hive_app[1])
    r = await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(k["app"]))
    assert r.status_code == 201 and r.json()["name"] == "job"
    base = "/v1/hive/tasks/job/streams"
    r = await http.post(f"{base}/researcher", headers=_h(k["researcher"]),
                        json={"records": [{"kind": "tokens", "data": "hello "},
                                          {"kind": "note", "data": "world"}]})
    assert r.status_code == 200, r.text
    assert r.json()["seqs"] == [0, 1] and r.json()["ref"] == "hive://job/researcher@0"
    assert (await http.get(f"{base}/researcher", headers=_h(k["coder"]))).text == "hello world"
    recs = (await http.get(f"{base}/researcher/records?offset=1",
                           headers=_h(k["coder"]))).json()["data"]
    assert [(x["seq"], x["writer"], x["data"]) for x in recs] == [(1, "researcher", "world")]
    listed = (await http.get("/v1/hive/tasks", headers=_h(k["app"]))).json()["data"]
    assert [t["name"] for t in listed] == ["job"]
    exp = await http.post("/v1/hive/expand", headers=_h(k["coder"]),
                          json={"text": "see hive://job/researcher@1"})
    assert exp.json() == {"text": "see world"}

    cases = [
        # (method, path, key, json, status, code)
        ("post", f"{base}/coder", "researcher", {"data": "x"}, 403, "forbidden"),
        ("post", "/v1/hive/tasks/nope/streams/researcher", "researcher", {"data": "x"}, 404,
         "hive_task_not_found"),
        ("get", f"{base}/ghost", "coder", None, 404, "hive_stream_not_found"),
        ("get", f"{base}/researcher/records?offset=9", "coder", None, 400, "invalid_request"),
        ("get", f"{base}/researcher/tail?offset=9", "coder", None, 400, "invalid_request"),
        ("post", f"{base}/researcher", "researcher", {"data": "x" * 5000}, 413,
         "payload_too_large"),
        ("post", f"{base}/researcher", "researcher", {"kind": "gossip", "data": "x"}, 400,
         "invalid_request"),
        ("post", "/v1/hive/tasks/..%2F..%2Fetc/streams/researcher", "researcher",
         {"data": "x"}, None, None),
        ("post", "/v1/hive/tasks/job/streams/..", "app", {"data": "x"}, None, None),
        ("get", "/v1/hive/tasks/job", "other", None, 404, "hive_task_not_found"),
        ("post", "/v1/hive/tasks", "app", {"name": "a/b"}, 400, "invalid_request"),
        ("post", "/v1/hive/gc", "app", {}, 403, "forbidden"),
    ]
    for method, path, who, body, status, code in cases:
        r = await http.request(method.upper(), path, headers=_h(k[who]), json=body)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        if status is not None:
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, r.text)
    # nothing half-written by any refused request
    assert (await http.get(f"{base}/researcher", headers=_h(k["coder"]))).text == "hello world"
    info = (await http.get("/v1/hive/tasks/job", headers=_h(k["app"]))).json()
    assert [s["name"] for s in info["streams"]] == ["researcher"]

    # quota: 200 kB per tenant
    big = {"records": [{"data": "y" * 4000}] * 60}
    r = await http.post(f"{base}/researcher", headers=_h(k["researcher"]), json=big)
    assert r.status_code == 429 and r.json()["error"]["code"] == "hive_quota_exceeded"
    rep = (await http.get("/v1/hive/report", headers=_h(k["admin"]))).json()
    assert rep["tenants"]["acme"]["streams"] == 1
    gc = (await http.post("/v1/hive/gc", headers=_h(k["admin"]), json={"dry_run": True})).json()
    assert gc["dry_run"] is True and gc["tasks"] == 0
    r = await http.delete("/v1/hive/tasks/job", headers=_h(k["app"]))
    assert r.json()["deleted"] is True
    assert (await http.get("/v1/hive/tasks/job", headers=_h(k["app"]))).status_code == 404


async def _events(resp: httpx.Response) -> AsyncIterator[dict]:
    event: dict = {}
    async for line in resp.aiter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith("id: "):
            event["id"] = int(line[4:])
        elif line.startswith("data: "):
            event["data"] = json.loads(line[6:])


async def test_sse_tail_streamed_body_and_last_event_id_resume(
        hive_app, http: httpx.AsyncClient) -> None:
    k = _keys(hive_app[1])
    await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(k["app"]))
    url = "/v1/hive/tasks/job/streams/researcher"
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first piece "
        await gate.wait()  # the body is still open while the reader sees the first piece
        yield "caf\u00e9 ".encode()[:4]  # a UTF-8 character split across two pieces
        yield "caf\u00e9 ".encode()[4:]
        yield b"last"

    writer = asyncio.create_task(http.post(
        url + "?end=true", content=body(),
        headers=_h(k["researcher"], **{"content-type": "text/plain"})))
    seen: list[dict] = []
    async with http.stream("GET", url + "/tail?wait=true", headers=_h(k["coder"])) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for ev in _events(resp):
            seen.append(ev)
            if len(seen) == 1:
                assert not writer.done()
                gate.set()
            if len(seen) == 2:
                break  # the reader goes away after seq 1
    w = await writer
    assert w.status_code == 200, w.text
    assert seen[0]["data"]["data"] == "first piece "
    async with http.stream("GET", url + "/tail",
                           headers=_h(k["coder"], **{"last-event-id": str(seen[-1]["id"])})
                           ) as resp:
        rest = [ev async for ev in _events(resp)]
    ids = [e["id"] for e in seen + rest]
    assert ids == list(range(len(ids)))  # no gap, no duplicate
    assert rest[-1]["data"]["kind"] == "end"
    text = (await http.get(url, headers=_h(k["coder"]))).text
    assert text == "first piece caf\u00e9 last"


async def test_tee_chat_completion_fake_llm(hive_app, http: httpx.AsyncClient,
                                            fake_upstream: FakeUpstream) -> None:
    k = _keys(hive_app[1])
    await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(k["app"]))
    chat = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    # streamed
    r = await http.post("/v1/chat/completions", json={**chat, "stream": True},
                        headers=_h(k["researcher"], **{"x-keel-hive": "job/researcher"}))
    assert r.status_code == 200 and r.headers["x-keel-hive"] == "hive://job/researcher@0"
    assert "hello" in r.text
    hive = hive_app[1].get(HiveService)
    recs = await hive.read("acme", "job", "researcher")
    assert "".join(x.data for x in recs).strip() == fake_upstream.reply
    assert len(recs) > 2 and recs[-1].kind == "end"  # chunk by chunk, then closed
    # not streamed: one record and the end (the answer may be the cache's copy of the
    # streamed one: the tee sits before the cache, so cached answers are teed too)
    r = await http.post("/v1/chat/completions", json=chat,
                        headers=_h(k["coder"], **{"x-keel-hive": "job/coder"}))
    assert r.status_code == 200
    recs = await hive.read("acme", "job", "coder")
    assert [(x.kind, x.data.strip()) for x in recs] == [("tokens", fake_upstream.reply),
                                                        ("end", "")]
    # refused before any model call: someone else's stream, an ended stream, bad names
    calls = len(fake_upstream.calls)
    for who, target, status in (("researcher", "job/coder", 403),
                                ("coder", "job/coder", 409),
                                ("coder", "missing/coder", 404),
                                ("coder", "job", 400), ("coder", "../x/coder", 400)):
        r = await http.post("/v1/chat/completions", json=chat,
                            headers=_h(k[who], **{"x-keel-hive": target}))
        assert r.status_code == status, (target, r.text)
    assert len(fake_upstream.calls) == calls


async def test_shared_files_over_http(hive_app, http: httpx.AsyncClient) -> None:
    k = _keys(hive_app[1])
    await http.post("/v1/hive/tasks", json={"name": "job"}, headers=_h(k["app"]))
    url = "/v1/hive/tasks/job/files/plan.md"
    r = await http.put(url, content=b"step 1", headers=_h(k["coder"], **{"if-none-match": "*"}))
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == '"1"' and r.json()["ref"] == "hive://job/files/plan.md@1"
    # any agent of the tenant reads it, with its version as the ETag
    r = await http.get(url, headers=_h(k["researcher"]))
    assert (r.status_code, r.content, r.headers["etag"]) == (200, b"step 1", '"1"')
    assert (await http.get(url, headers=_h(k["researcher"], **{"if-none-match": '"1"'}))
            ).status_code == 304
    r = await http.put(url, content=b"step 1, 2", headers=_h(k["researcher"],
                                                              **{"if-match": '"1"'}))
    assert r.status_code == 200 and r.json()["version"] == 2
    cases = [
        # (method, path, key, headers, body, status, code, message part)
        ("PUT", url, "coder", {"if-match": '"1"'}, b"stale", 412, "hive_version_mismatch",
         "version 2, not 1"),
        ("PUT", url, "coder", {"if-none-match": "*"}, b"again", 412, "hive_version_mismatch",
         "already exists"),
        ("PUT", url, "coder", {}, b"blind", 428, "hive_precondition_required", "If-Match"),
        ("DELETE", url, "coder", {}, None, 428, "hive_precondition_required", "If-Match"),
        ("DELETE", url, "coder", {"if-match": '"1"'}, None, 412, "hive_version_mismatch", "2"),
        ("PUT", url, "coder", {"if-match": "*"}, b"x", 400, "invalid_request", "one version"),
        ("PUT", url, "coder", {"if-match": 'W/"2"'}, b"x", 400, "invalid_request", "weak"),
        ("PUT", url, "coder", {"if-match": '"2", "3"'}, b"x", 400, "invalid_request",
         "one version"),
        ("PUT", url, "coder", {"if-match": '"2"'}, b"y" * 200_000, 413,
         "payload_too_large", "max_file_bytes"),
        ("PUT", "/v1/hive/tasks/job/files/..%2F..%2Fetc", "coder", {"if-none-match": "*"},
         b"x", 404, "not_found", "no such endpoint"),  # a '/' never reaches a name
        ("PUT", "/v1/hive/tasks/job/files/a..b", "coder", {"if-none-match": "*"},
         b"x", 400, "invalid_request", "invalid file name"),
        ("PUT", "/v1/hive/tasks/job/files/.lock-plan.md", "coder", {"if-none-match": "*"},
         b"x", 400, "invalid_request", "invalid file name"),
        ("GET", "/v1/hive/tasks/job/files/ghost", "coder", {}, None, 404,
         "hive_file_not_found", "ghost"),
        ("GET", url, "other", {}, None, 404, "hive_task_not_found", "job"),
        ("PUT", "/v1/hive/tasks/nope/files/a", "coder", {"if-none-match": "*"}, b"x", 404,
         "hive_task_not_found", "nope"),
    ]
    for method, path, who, headers, body, status, code, part in cases:
        r = await http.request(method, path, headers=_h(k[who], **headers), content=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (path, r.text)
        assert part in r.json()["error"]["message"], r.text
    mismatch = await http.put(url, content=b"stale", headers=_h(k["coder"],
                                                                 **{"if-match": '"1"'}))
    assert mismatch.json()["error"]["current_version"] == 2
    # nothing half-written by any refused request
    r = await http.get(url, headers=_h(k["coder"]))
    assert (r.content, r.headers["etag"]) == (b"step 1, 2", '"2"')
    listed = (await http.get("/v1/hive/tasks/job/files", headers=_h(k["app"]))).json()["data"]
    assert [(f["name"], f["version"], f["size"]) for f in listed] == [("plan.md", 2, 9)]
    # quota (200 kB per tenant): a file that would pass it is refused whole
    big = b"z" * 190_000
    r = await http.put("/v1/hive/tasks/job/files/big", content=big,
                       headers=_h(k["coder"], **{"if-none-match": "*"}))
    assert r.status_code == 201
    r = await http.put("/v1/hive/tasks/job/files/big2", content=big,
                       headers=_h(k["coder"], **{"if-none-match": "*"}))
    assert r.status_code == 429 and r.json()["error"]["code"] == "hive_quota_exceeded"
    assert (await http.get("/v1/hive/tasks/job/files/big2",
                           headers=_h(k["coder"]))).status_code == 404
    # the files stream tells tailers what changed; references expand
    recs = (await http.get("/v1/hive/tasks/job/streams/files/records",
                           headers=_h(k["coder"]))).json()["data"]
    assert [json.loads(x["data"])["ref"] for x in recs] == [
        "hive://job/files/plan.md@1", "hive://job/files/plan.md@2", "hive://job/files/big@1"]
    exp = await http.post("/v1/hive/expand", headers=_h(k["researcher"]),
                          json={"text": "plan: hive://job/files/plan.md@2"})
    assert exp.json() == {"text": "plan: step 1, 2"}
    # the console lists the task's files
    login = await http.post("/console/login", content=urlencode({"api_key": k["app"]}),
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert login.status_code == 303
    page = await http.get("/console/hive")
    assert page.status_code == 200 and "plan.md (v2" in page.text and "big (v1" in page.text
    r = await http.delete(url, headers=_h(k["coder"], **{"if-match": '"2"'}))
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert (await http.get(url, headers=_h(k["coder"]))).status_code == 404


@pytest.fixture
def gc_app(tmp_path: Path, fake_upstream: FakeUpstream,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Services]]:
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, fake_upstream,
                             hive={"enabled": True, "gc_interval_s": 0.2})
    svc = build_services(settings)
    with serve_app(create_app(settings, services=svc)) as base:
        yield base, svc


async def test_scheduled_gc_deletes_expired_tasks_by_itself(gc_app) -> None:
    base, svc = gc_app
    hive = svc.get(HiveService)
    key = svc.keys.create("acme").secret
    async with httpx.AsyncClient(base_url=base, timeout=20) as http:
        for name, ttl in (("short", 1), ("long", 3600)):
            r = await http.post("/v1/hive/tasks", json={"name": name, "ttl_s": ttl},
                                headers=_h(key))
            assert r.status_code == 201
        await hive.files.put(Principal(key_id="k", tenant="acme"), "short", "f", b"scratch",
                             expect=0)
        deadline = asyncio.get_running_loop().time() + 15
        while (await http.get("/v1/hive/tasks/short", headers=_h(key))).status_code == 200:
            assert asyncio.get_running_loop().time() < deadline, "gc never ran"
            await asyncio.sleep(0.1)
        assert (await http.get("/v1/hive/tasks/long", headers=_h(key))).status_code == 200
