"""Shared files of a hive task: one contract over both backends (a directory and a real
Valkey), through :class:`keel.hive.service.HiveService`, with real processes for the
concurrency and crash cases.

- compare-and-set on a version, create-only, delete at a version; every change is a
  ``file`` record in the task's ``files`` stream; ``hive://task/files/NAME@V`` expands;
- the lock for a read-modify-write: others' writes wait for it; a holder killed with
  SIGKILL never blocks the others for good (flock dies with it; the Redis key expires);
- 8 processes x 50 read-modify-write increments (half compare-and-set with retries, half
  under the lock): the counter ends at exactly 400, no lost update;
- a writer killed with SIGKILL mid-write never leaves a torn file for a reader;
- files count toward the byte quota, the task's size, gc and task delete.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from keel.errors import InvalidRequest, PayloadTooLarge, PermissionDenied
from keel.gateway.context import Principal
from keel.hive.model import (
    HiveConflict,
    HiveFileLocked,
    HiveFileNotFound,
    HiveQuotaExceeded,
    HiveRef,
    HiveTaskNotFound,
    HiveVersionMismatch,
)
from keel.hive.service import HiveService, open_store
from keel.hive.settings import HiveSettings

BACKENDS = [pytest.param("dir"), pytest.param("redis", marks=pytest.mark.services)]
TENANT = Principal(key_id="k1", tenant="acme")
CODER = Principal(key_id="k2", tenant="acme", agent="coder")
CRITIC = Principal(key_id="k3", tenant="acme", agent="critic")
OTHER = Principal(key_id="k4", tenant="globex")

# a child process opening the same store: argv = url, prefix, data_dir, mode, args...
CHILD = r"""
import asyncio, sys, time
from pathlib import Path
from keel.gateway.context import Principal
from keel.hive.model import HiveVersionMismatch
from keel.hive.service import HiveService, open_store
from keel.hive.settings import HiveSettings
url, prefix, data_dir, mode = sys.argv[1:5]
P = Principal(key_id="c", tenant="acme", agent="w" + sys.argv[5])

async def main():
    s = HiveSettings(enabled=True, url=url, poll_s=0.2)
    hive = HiveService(open_store(s, Path(data_dir), prefix=prefix), s)
    f = hive.files
    if mode == "cas":  # read, write at that version, retry on conflict
        for _ in range(int(sys.argv[6])):
            while True:
                cur = await f.get("acme", "job", "counter")
                try:
                    await f.put(P, "job", "counter", str(int(cur.data) + 1).encode(),
                                expect=cur.info.version)
                    break
                except HiveVersionMismatch:
                    pass
    elif mode == "locked":  # read-modify-write under the file's lock
        for _ in range(int(sys.argv[6])):
            await f.update(P, "job", "counter", lambda b: str(int(b) + 1).encode())
    elif mode == "hold":  # take the lock, say so, then hang until killed
        await f.store.file_lock("acme", "job", "counter", float(sys.argv[6]), 10)
        print("locked", flush=True)
        await asyncio.sleep(3600)
    elif mode == "churn":  # rewrite a big file forever: version V holds letter (V-1) % 26
        v = (await f.get("acme", "job", "big")).info.version
        while True:
            data = bytes([65 + v % 26]) * int(sys.argv[6])
            v = (await f.put(P, "job", "big", data, expect=v)).version
    await hive.aclose()

asyncio.run(main())
"""


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "redis":
        return request.getfixturevalue("redis_clean_url"), f"kt-{uuid.uuid4().hex[:8]}:"
    return str(tmp_path / "hive"), "keel:"


def _open(backend: tuple[str, str], tmp_path: Path, **kw: object) -> HiveService:
    settings = HiveSettings(enabled=True, url=backend[0], poll_s=0.2, **kw)  # type: ignore[arg-type]
    return HiveService(open_store(settings, tmp_path, prefix=backend[1]), settings)


@pytest.fixture
async def hive(backend: tuple[str, str], tmp_path: Path) -> AsyncIterator[HiveService]:
    h = _open(backend, tmp_path)
    await h.create_task(TENANT, "job")
    yield h
    await h.aclose()


def _child(backend: tuple[str, str], tmp_path: Path, mode: str, *args: object,
           **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD, backend[0], backend[1],
                             str(tmp_path), mode, *map(str, args)], **kw)  # type: ignore[call-overload]


async def test_compare_and_set_create_update_delete(hive: HiveService) -> None:
    f = hive.files
    one = await f.put(CODER, "job", "plan.md", b"v1", expect=0)
    assert (one.version, one.size, one.writer) == (1, 2, "coder")
    with pytest.raises(HiveVersionMismatch, match="already exists") as exc:
        await f.put(CRITIC, "job", "plan.md", b"again", expect=0)
    assert exc.value.extra["current_version"] == 1
    two = await f.put(CRITIC, "job", "plan.md", b"version two", expect=1)  # any agent
    assert two.version == 2
    with pytest.raises(HiveVersionMismatch, match="version 2, not 1") as exc:
        await f.put(CODER, "job", "plan.md", b"stale", expect=1)
    assert exc.value.extra["current_version"] == 2
    got = await f.get("acme", "job", "plan.md")
    assert (got.data, got.info.version, got.info.etag()) == (b"version two", 2, '"2"')
    assert [(i.name, i.version, i.size) for i in await f.list("acme", "job")] == [
        ("plan.md", 2, 11)]
    with pytest.raises(HiveVersionMismatch):
        await f.delete(CODER, "job", "plan.md", expect=1)
    assert (await f.delete(CODER, "job", "plan.md", expect=2)).version == 2
    with pytest.raises(HiveFileNotFound):
        await f.get("acme", "job", "plan.md")
    with pytest.raises(HiveFileNotFound):
        await f.delete(CODER, "job", "plan.md", expect=2)
    assert (await f.put(CODER, "job", "plan.md", b"again", expect=0)).version == 1
    # every change is a record in the files stream, in order
    recs = await hive.read("acme", "job", "files")
    assert [(r.kind, r.writer) for r in recs] == [("file", "coder"), ("file", "critic"),
                                                  ("file", "coder"), ("file", "coder")]
    assert [orjson.loads(r.data) for r in recs] == [
        {"op": "put", "name": "plan.md", "version": 1, "size": 2,
         "ref": "hive://job/files/plan.md@1"},
        {"op": "put", "name": "plan.md", "version": 2, "size": 11,
         "ref": "hive://job/files/plan.md@2"},
        {"op": "delete", "name": "plan.md", "version": 2, "size": 11,
         "ref": "hive://job/files/plan.md@2"},
        {"op": "put", "name": "plan.md", "version": 1, "size": 5,
         "ref": "hive://job/files/plan.md@1"}]


async def test_tailer_sees_each_file_change_live(hive: HiveService) -> None:
    seen: list[tuple[str, int]] = []

    async def reader() -> None:
        async for rec in await hive.tail("acme", "job", "files", wait=True):
            d = orjson.loads(rec.data)
            seen.append((d["name"], d["version"]))
            if len(seen) == 3:
                return

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)
    await hive.files.put(CODER, "job", "a.py", b"1", expect=0)
    await hive.files.put(CODER, "job", "a.py", b"2", expect=1)
    await hive.files.put(CODER, "job", "b.py", b"x", expect=0)
    await asyncio.wait_for(task, 5)
    assert seen == [("a.py", 1), ("a.py", 2), ("b.py", 1)]


async def test_file_references_expand(hive: HiveService) -> None:
    await hive.files.put(CODER, "job", "notes.md", b"alpha", expect=0)
    await hive.files.put(CODER, "job", "notes.md", b"beta", expect=1)
    ref = HiveRef.parse("hive://job/files/notes.md@2")
    assert (ref.task, ref.stream, ref.offset, ref.file) == ("job", "notes.md", 2, True)
    assert str(ref) == "hive://job/files/notes.md@2"
    assert await hive.expand("acme", "now: hive://job/files/notes.md, at 2: "
                             "hive://job/files/notes.md@2.") == "now: beta, at 2: beta."
    with pytest.raises(HiveConflict, match="version 2"):
        await hive.expand("acme", "hive://job/files/notes.md@1")  # replaced
    with pytest.raises(HiveTaskNotFound):
        await hive.expand("globex", "hive://job/files/notes.md")
    with pytest.raises(InvalidRequest):
        HiveRef.parse("hive://job/files/../x")


async def test_bad_input_writes_nothing(hive: HiveService) -> None:
    f = hive.files
    for bad in ("../etc", "a/b", ".lock-x", "", "x" * 65, "a..b"):
        with pytest.raises(InvalidRequest):
            await f.put(CODER, "job", bad, b"x", expect=0)
        with pytest.raises(InvalidRequest):
            await f.get("acme", "job", bad)
    with pytest.raises(HiveTaskNotFound):
        await f.put(CODER, "nope", "a", b"x", expect=0)
    with pytest.raises(PayloadTooLarge):
        await f.put(CODER, "job", "a", b"x" * (9 << 20), expect=0)
    with pytest.raises(InvalidRequest, match="version"):
        await f.put(CODER, "job", "a", b"x", expect=None)
    with pytest.raises(PermissionDenied, match="written by the hive"):
        await hive.append(TENANT, "job", "files", hive.records(TENANT, "files",
                                                                 [("note", "forged")]))
    with pytest.raises(HiveTaskNotFound):
        await f.get(OTHER.tenant, "job", "a")
    assert await f.list("acme", "job") == []
    assert (await hive.task("acme", "job")).streams == []


async def test_files_count_toward_quota_size_gc_and_delete(
        backend: tuple[str, str], tmp_path: Path) -> None:
    hive = _open(backend, tmp_path, quota_bytes=5000)
    try:
        await hive.create_task(TENANT, "job", ttl_s=5)
        await hive.files.put(CODER, "job", "big", b"x" * 3000, expect=0)
        with pytest.raises(HiveQuotaExceeded, match="quota_bytes"):
            await hive.files.put(CODER, "job", "more", b"y" * 2500, expect=0)
        # replacing a file only needs the difference
        await hive.files.put(CODER, "job", "big", b"z" * 3500, expect=1)
        info = await hive.task("acme", "job")
        assert [f.name for f in info.files] == ["big"] and info.bytes >= 3500
        rep = await hive.report("acme")
        assert rep["tenants"]["acme"]["bytes"] >= 3500  # type: ignore[index]
        assert (await hive.store.usage("acme"))[0] >= 3500
        done = await hive.gc(dry_run=False, now=time.time() + 10)
        assert [t.name for t in done.tasks] == ["job"] and done.bytes >= 3500
        await hive.create_task(TENANT, "job")
        assert await hive.files.list("acme", "job") == []  # gone with its task
        await hive.files.put(CODER, "job", "f", b"1", expect=0)
        assert await hive.delete_task("acme", "job") >= 1
        with pytest.raises(HiveTaskNotFound):
            await hive.files.get("acme", "job", "f")
    finally:
        await hive.aclose()


async def test_lock_makes_other_writers_wait(hive: HiveService) -> None:
    f = hive.files
    await f.put(TENANT, "job", "counter", b"0", expect=0)
    async with f.locked(CODER, "job", "counter") as lock:
        other = asyncio.create_task(f.put(CRITIC, "job", "counter", b"critic", expect=1))
        await asyncio.sleep(0.3)
        assert not other.done()  # waits for the holder
        with pytest.raises(HiveFileLocked):
            await hive.store.file_lock("acme", "job", "counter", 5, 0.1)
        await f.put(CODER, "job", "counter", b"coder", expect=1, lock=lock)
    with pytest.raises(HiveVersionMismatch):  # then its compare-and-set sees our write
        await asyncio.wait_for(other, 5)
    assert (await f.get("acme", "job", "counter")).data == b"coder"
    # a released lock cannot be used again
    with pytest.raises(HiveFileLocked):
        await f.put(CODER, "job", "counter", b"late", expect=None, lock=lock)


async def test_killed_lock_holder_does_not_block_forever(
        hive: HiveService, backend: tuple[str, str], tmp_path: Path) -> None:
    await hive.files.put(TENANT, "job", "counter", b"0", expect=0)
    holder = _child(backend, tmp_path, "hold", 1, 1.0, stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"locked"
    with pytest.raises(HiveFileLocked):
        await hive.store.file_lock("acme", "job", "counter", 5, 0.05)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    info = await hive.files.update(CODER, "job", "counter", lambda b: b"1")
    assert info.version == 2
    # directory: the flock died with the process; Redis: the key's 1 s TTL ran out
    assert time.monotonic() - started < 5


async def test_8_processes_x_50_increments_lose_no_update(
        hive: HiveService, backend: tuple[str, str], tmp_path: Path) -> None:
    await hive.files.put(TENANT, "job", "counter", b"0", expect=0)
    procs = [_child(backend, tmp_path, "cas" if i % 2 else "locked", i, 50)
             for i in range(8)]
    for p in procs:
        assert p.wait(timeout=600) == 0
    got = await hive.files.get("acme", "job", "counter")
    assert got.data == b"400" and got.info.version == 401
    recs = await hive.read("acme", "job", "files", limit=1000)
    assert [orjson.loads(r.data)["version"] for r in recs] == list(range(1, 402))


async def test_writer_killed_mid_write_never_leaves_a_torn_file(
        hive: HiveService, backend: tuple[str, str], tmp_path: Path) -> None:
    size = 2 << 20
    await hive.files.put(TENANT, "job", "big", b"A" * size, expect=0)
    reads = 0
    for kill in range(6):
        writer = _child(backend, tmp_path, "churn", kill, size)
        deadline = time.monotonic() + 0.3 + 0.15 * kill
        while time.monotonic() < deadline:
            f = await hive.files.get("acme", "job", "big")
            assert f.data == bytes([65 + (f.info.version - 1) % 26]) * size
            reads += 1
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        f = await hive.files.get("acme", "job", "big")
        assert len(f.data) == size and f.data.count(f.data[:1]) == size
    assert reads > 6
    # the next writer carries on from the last whole version (and sweeps temp files)
    v = (await hive.files.get("acme", "job", "big")).info.version
    assert (await hive.files.put(TENANT, "job", "big", b"done", expect=v)).version == v + 1
    if backend[0].startswith("/"):
        leftovers = [p.name for p in Path(backend[0]).rglob(".tmp-*")]
        assert leftovers == []


@pytest.mark.services
async def test_redis_lock_expires_and_a_late_holder_cannot_write(
        redis_clean_url: str, tmp_path: Path) -> None:
    hive = _open((redis_clean_url, "kt-exp:"), tmp_path)
    try:
        await hive.create_task(TENANT, "job")
        await hive.files.put(TENANT, "job", "counter", b"0", expect=0)
        slow = await hive.store.file_lock("acme", "job", "counter", 0.2, 1)
        await asyncio.sleep(0.4)  # the holder stalls past its TTL
        async with hive.files.locked(CRITIC, "job", "counter") as fresh:
            with pytest.raises(HiveFileLocked, match="expired"):
                await hive.files.put(CODER, "job", "counter", b"late", expect=1, lock=slow)
            await hive.files.put(CRITIC, "job", "counter", b"1", expect=1, lock=fresh)
        assert (await hive.files.get("acme", "job", "counter")).data == b"1"
    finally:
        await hive.aclose()


async def test_one_process_per_period_claims_the_scheduled_gc(
        backend: tuple[str, str], tmp_path: Path) -> None:
    a, b = _open(backend, tmp_path), _open(backend, tmp_path)  # two gateways, one store
    try:
        now = time.time()
        assert [await a.store.claim("gc", 60, now), await b.store.claim("gc", 60, now + 1),
                await a.store.claim("gc", 60, now + 2)] == [True, False, False]
        if backend[0].startswith("/"):
            assert await b.store.claim("gc", 60, now + 61)  # the next period
    finally:
        await a.aclose()
        await b.aclose()
