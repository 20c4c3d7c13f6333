"""One contract over both hive backends: a directory and Redis/Valkey Streams (real ones).

Every test runs against ``dir`` (a temp directory) and ``redis`` (the Valkey the test
harness starts), through :class:`keel.hive.service.HiveService`, the layer the HTTP
routes, the gateway tee and the CLI share.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keel.errors import InvalidRequest, PayloadTooLarge, PermissionDenied
from keel.gateway.context import Principal
from keel.hive.model import (
    HiveConflict,
    HiveQuotaExceeded,
    HiveRef,
    HiveStreamNotFound,
    HiveTaskNotFound,
)
from keel.hive.service import HiveService, open_store
from keel.hive.settings import HiveSettings

BACKENDS = [pytest.param("dir"), pytest.param("redis", marks=pytest.mark.services)]
TENANT = Principal(key_id="k1", tenant="acme")
RESEARCHER = Principal(key_id="k2", tenant="acme", agent="researcher")
OTHER = Principal(key_id="k3", tenant="globex")


@pytest.fixture(params=BACKENDS)
def make_hive(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "redis":
        url = request.getfixturevalue("redis_clean_url")
        prefix = f"keel-test-{uuid.uuid4().hex[:8]}:"
    else:
        url, prefix = str(tmp_path / "hive"), ""

    def make(**kw: object) -> HiveService:
        settings = HiveSettings(enabled=True, url=url, poll_s=0.2, **kw)  # type: ignore[arg-type]
        return HiveService(open_store(settings, tmp_path, prefix=prefix or "keel:"), settings)

    return make  # callers close what they open


@pytest.fixture
async def hive(make_hive) -> AsyncIterator[HiveService]:  # type: ignore[no-untyped-def]
    h = make_hive()
    yield h
    await h.aclose()


async def _note(hive: HiveService, who: Principal, task: str, stream: str,
                *texts: str, kind: str = "tokens") -> list[int]:
    return await hive.append(who, task, stream,
                             hive.records(who, stream, [(kind, t) for t in texts]))


async def test_append_assigns_sequence_numbers_and_reads_back(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")
    assert await _note(hive, RESEARCHER, "t1", "researcher", "a", "b") == [0, 1]
    assert await _note(hive, RESEARCHER, "t1", "researcher", "c") == [2]
    recs = await hive.read("acme", "t1", "researcher")
    assert [(r.seq, r.data, r.writer, r.kind) for r in recs] == [
        (0, "a", "researcher", "tokens"), (1, "b", "researcher", "tokens"),
        (2, "c", "researcher", "tokens")]
    assert all(abs(r.ts - time.time()) < 60 for r in recs)
    assert [r.seq for r in await hive.read("acme", "t1", "researcher", start=1)] == [1, 2]
    assert await hive.text("acme", "t1", "researcher") == "abc"
    info = await hive.task("acme", "t1")
    assert [(s.name, s.records, s.ended) for s in info.streams] == [("researcher", 3, False)]
    assert info.bytes > 0


async def test_tail_is_live_and_stops_at_end(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")
    await _note(hive, RESEARCHER, "t1", "researcher", "first")
    seen: list[tuple[int, str]] = []

    async def reader() -> None:
        async for rec in await hive.tail("acme", "t1", "researcher"):
            seen.append((rec.seq, rec.kind))

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    assert seen == [(0, "tokens")]  # live: read before the writer finished
    started = time.perf_counter()
    await _note(hive, RESEARCHER, "t1", "researcher", "second")
    while len(seen) < 2:
        await asyncio.sleep(0.001)
    # woken by the change (inotify / XREAD BLOCK), not by the 0.2 s poll
    assert time.perf_counter() - started < 0.15
    await _note(hive, RESEARCHER, "t1", "researcher", "", kind="end")
    await asyncio.wait_for(task, 5)
    assert seen == [(0, "tokens"), (1, "tokens"), (2, "end")]


async def test_tail_resumes_from_an_offset_after_a_restart(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")
    await _note(hive, RESEARCHER, "t1", "researcher", *"abcde")
    first = []
    async for rec in await hive.tail("acme", "t1", "researcher"):
        first.append(rec.seq)
        if rec.seq == 2:
            break  # the reader "crashes" after seq 2
    await _note(hive, RESEARCHER, "t1", "researcher", "f")
    await _note(hive, RESEARCHER, "t1", "researcher", "", kind="end")
    resumed = [r.seq async for r in await hive.tail("acme", "t1", "researcher", start=3)]
    assert first == [0, 1, 2] and resumed == [3, 4, 5, 6]


async def test_ended_stream_refuses_more_writes(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")
    await _note(hive, RESEARCHER, "t1", "researcher", "x")
    await _note(hive, RESEARCHER, "t1", "researcher", "", kind="end")
    with pytest.raises(HiveConflict):
        await _note(hive, RESEARCHER, "t1", "researcher", "late")
    assert [r.kind for r in await hive.read("acme", "t1", "researcher")] == ["tokens", "end"]


async def test_bad_input_is_refused_and_nothing_is_written(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")
    with pytest.raises(HiveTaskNotFound):
        await _note(hive, RESEARCHER, "nope", "researcher", "x")
    with pytest.raises(PermissionDenied):
        await _note(hive, RESEARCHER, "t1", "coder", "x")
    for bad in ("../etc", "a/b", ".hidden", "", "x" * 65, "a..b"):
        with pytest.raises(InvalidRequest):
            await hive.read("acme", bad, "researcher")
        with pytest.raises(InvalidRequest):
            await _note(hive, TENANT, "t1", bad, "x")
    with pytest.raises(HiveStreamNotFound):
        await hive.read("acme", "t1", "ghost")
    with pytest.raises(HiveStreamNotFound):
        await hive.tail("acme", "t1", "ghost")
    with pytest.raises(PayloadTooLarge):
        hive.records(RESEARCHER, "researcher", [("tokens", "x" * (2 << 20))])
    with pytest.raises(InvalidRequest):
        hive.records(RESEARCHER, "researcher", [("gossip", "x")])
    await _note(hive, RESEARCHER, "t1", "researcher", "a", "b")
    with pytest.raises(InvalidRequest, match="past the end"):
        await hive.read("acme", "t1", "researcher", start=5)
    with pytest.raises(InvalidRequest, match="past the end"):
        await hive.tail("acme", "t1", "researcher", start=5)
    # another tenant cannot see the task
    with pytest.raises(HiveTaskNotFound):
        await hive.task(OTHER.tenant, "t1")
    assert await hive.text("acme", "t1", "researcher") == "ab"


async def test_quotas_refuse_before_writing(make_hive) -> None:  # type: ignore[no-untyped-def]
    hive = make_hive(quota_bytes=2000, quota_streams=2)
    try:
        await hive.create_task(TENANT, "t1")
        await _note(hive, TENANT, "t1", "a", "x")
        await _note(hive, TENANT, "t1", "b", "x")
        with pytest.raises(HiveQuotaExceeded, match="quota_streams"):
            await _note(hive, TENANT, "t1", "c", "x")
        with pytest.raises(HiveQuotaExceeded, match="quota_bytes"):
            await _note(hive, TENANT, "t1", "a", "y" * 1900)
        assert await hive.text("acme", "t1", "a") == "x"
        with pytest.raises(HiveStreamNotFound):
            await hive.read("acme", "t1", "c")
        # another tenant has its own quota
        await hive.create_task(OTHER, "t1")
        await _note(hive, OTHER, "t1", "a", "z")
    finally:
        await hive.aclose()


async def test_references_expand_to_the_stream_text(hive: HiveService) -> None:
    await hive.create_task(TENANT, "job")
    await _note(hive, RESEARCHER, "job", "researcher", "alpha ", "beta ", "gamma")
    ref = HiveRef.parse("hive://job/researcher@1")
    assert (ref.task, ref.stream, ref.offset) == ("job", "researcher", 1)
    out = await hive.expand("acme", "notes: hive://job/researcher@1 | all: hive://job/researcher")
    assert out == "notes: beta gamma | all: alpha beta gamma"
    with pytest.raises(InvalidRequest):
        HiveRef.parse("hive://../researcher")
    with pytest.raises(HiveTaskNotFound):
        await hive.expand("globex", "hive://job/researcher")


async def test_gc_dry_run_lists_then_deletes_expired_tasks(hive: HiveService) -> None:
    await hive.create_task(TENANT, "old", ttl_s=5)
    await hive.create_task(TENANT, "fresh", ttl_s=3600)
    await _note(hive, TENANT, "old", "notes", "x" * 100)
    later = time.time() + 10
    dry = await hive.gc(dry_run=True, now=later)
    assert [t.name for t in dry.tasks] == ["old"] and dry.bytes >= 100
    assert await hive.task("acme", "old")  # still there
    done = await hive.gc(dry_run=False, now=later)
    assert [t.name for t in done.tasks] == ["old"]
    with pytest.raises(HiveTaskNotFound):
        await hive.task("acme", "old")
    rep = await hive.report(None)
    assert rep["tenants"]["acme"]["tasks"] == 1  # type: ignore[index]


async def test_an_expired_task_is_gone_before_the_collector_runs(hive: HiveService) -> None:
    """Idle past its ttl_s, a task's streams and files are unreadable at once, whenever the
    collector gets to it; its name starts afresh; it can still be deleted."""
    await hive.create_task(TENANT, "brief", ttl_s=1)
    await _note(hive, TENANT, "brief", "notes", "the plan")
    await hive.files.put(TENANT, "brief", "draft", b"v1", expect=0)
    await asyncio.sleep(1.2)
    for read in (hive.task("acme", "brief"), hive.read("acme", "brief", "notes"),
                 hive.expand("acme", "see hive://brief/notes"),
                 hive.files.get("acme", "brief", "draft")):
        with pytest.raises(HiveTaskNotFound, match="expired"):
            await read
    assert "brief" not in [t.name for t in await hive.live_tasks("acme")]
    fresh = await hive.create_task(TENANT, "brief", ttl_s=1)
    assert fresh.streams == [] and fresh.files == []
    assert await hive.files.list("acme", "brief") == []
    await asyncio.sleep(1.2)
    await hive.delete_task("acme", "brief")  # an expired task can be deleted
    assert await hive.store.task("acme", "brief") is None


async def test_delete_task_frees_its_streams(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")
    await _note(hive, TENANT, "t1", "a", "hello")
    assert await hive.delete_task("acme", "t1") > 0
    with pytest.raises(HiveTaskNotFound):
        await hive.read("acme", "t1", "a")
    await hive.create_task(TENANT, "t1")  # the name can be used again, empty
    assert (await hive.task("acme", "t1")).streams == []


async def test_concurrent_writers_to_one_stream_never_interleave(hive: HiveService) -> None:
    await hive.create_task(TENANT, "t1")

    async def writer(w: int) -> None:
        for i in range(50):
            await _note(hive, TENANT, "t1", "shared", f"{w}:{i};")

    await asyncio.gather(*(writer(w) for w in range(8)))
    recs = await hive.read("acme", "t1", "shared", limit=10_000)
    assert [r.seq for r in recs] == list(range(400))
    for w in range(8):
        mine = [int(r.data.split(":")[1][:-1]) for r in recs if r.data.startswith(f"{w}:")]
        assert mine == list(range(50))
