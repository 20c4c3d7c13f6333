"""The directory backend under crashes and many concurrent writers (real processes).

- a writer killed with SIGKILL mid-stream leaves a readable stream: every record whole,
  sequence numbers contiguous; the next writer carries on after the last whole record;
- a torn frame (a machine that stopped mid-``write()``) is skipped by readers and cut off
  by the next writer; a reader resumes from its last offset after a restart;
- 64 writers in 4 processes appending to one stream at once: nothing lost, duplicated,
  reordered (per writer) or interleaved (every frame's checksum holds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keel.gateway.context import Principal
from keel.hive.framing import scan
from keel.hive.model import NewRecord
from keel.hive.service import HiveService, open_store
from keel.hive.settings import HiveSettings
from keel.hive.store_dir import DirHiveStore, tenant_dir

APP = Principal(key_id="k", tenant="acme")

WRITER = r"""
import sys, threading
from pathlib import Path
from keel.hive.model import NewRecord
from keel.hive.store_dir import DirHiveStore
root, task_dir, stream, pid = sys.argv[1], sys.argv[2], sys.argv[5], sys.argv[6]
threads, count = int(sys.argv[3]), int(sys.argv[4])
def run(t):
    store = DirHiveStore(Path(root))  # one store per thread: separate fds and flocks
    for i in range(count):
        rec = NewRecord("tokens", f"{pid}.{t}:{i}|" + "x" * (i % 50), f"w{pid}.{t}")
        store.append_sync(Path(task_dir), stream, [rec], 0.0)
ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
"""


async def _hive(tmp_path: Path) -> tuple[HiveService, Path]:
    settings = HiveSettings(enabled=True, url=str(tmp_path / "hive"), poll_s=0.2)
    hive = HiveService(open_store(settings, tmp_path), settings)
    await hive.create_task(APP, "job")
    return hive, tmp_path / "hive" / tenant_dir("acme") / "job"


def _writers(root: Path, task_dir: Path, procs: int, threads: int, count: int,
             stream: str = "shared") -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(task_dir),
                              str(threads), str(count), stream, str(p)])
            for p in range(procs)]


async def test_kill_9_mid_stream_leaves_whole_records(tmp_path: Path) -> None:
    hive, task_dir = await _hive(tmp_path)
    proc = _writers(tmp_path / "hive", task_dir, 1, 1, 10_000_000, "s")[0]
    log = task_dir / "s.log"
    deadline = time.monotonic() + 30
    while (not log.exists() or log.stat().st_size < 200_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    recs = await hive.read("acme", "job", "s", limit=10**7)
    assert len(recs) > 1000
    assert [r.seq for r in recs] == list(range(len(recs)))
    assert all(r.data.startswith(f"0.0:{r.seq}|") for r in recs)
    # the next writer carries on right after the last whole record
    seqs = await hive.append(APP, "job", "s", [NewRecord("tokens", "after", "app")])
    assert seqs == [len(recs)]
    await hive.aclose()


async def test_torn_frame_is_skipped_then_cut_and_reader_resumes(tmp_path: Path) -> None:
    hive, task_dir = await _hive(tmp_path)
    await hive.append(APP, "job", "s", [NewRecord("tokens", f"r{i}", "app") for i in range(5)])
    log = task_dir / "s.log"
    whole = log.read_bytes()
    good = len(whole)
    # a machine that stopped mid-write: half of a sixth frame at the end of the file
    from keel.hive.framing import encode_all

    frame = encode_all(5, time.time(), [NewRecord("tokens", "torn-" * 20, "app")])
    with open(log, "ab") as fh:
        fh.write(frame[: len(frame) // 2])
    sc = scan(log.read_bytes(), 0, 0, final=True)
    assert sc.torn and len(sc.records) == 5
    # a reader sees the five whole records (a fresh process: nothing cached)
    fresh = HiveService(DirHiveStore(tmp_path / "hive"), hive.settings)
    first = []
    async for rec in await fresh.tail("acme", "job", "s"):
        first.append(rec.data)
        if rec.seq == 2:
            break  # the reader stops (crashes) after seq 2
    assert first == ["r0", "r1", "r2"]
    # the next writer (another process: no cache) cuts the torn frame and appends
    writer = HiveService(DirHiveStore(tmp_path / "hive"), hive.settings)
    assert await writer.append(APP, "job", "s", [NewRecord("tokens", "r5", "app"),
                                                 NewRecord("end", "", "app")]) == [5, 6]
    assert log.read_bytes()[:good] == whole
    # the restarted reader resumes after its last offset: no gap, no duplicate, no torn data
    rest = [r.data async for r in await fresh.tail("acme", "job", "s", start=3)]
    assert rest == ["r3", "r4", "r5", ""]
    for h in (hive, fresh, writer):
        await h.aclose()


async def test_64_writers_in_4_processes_one_stream(tmp_path: Path) -> None:
    hive, task_dir = await _hive(tmp_path)
    procs, threads, count = 4, 16, 150
    for p in _writers(tmp_path / "hive", task_dir, procs, threads, count):
        assert p.wait(timeout=300) == 0
    raw = (task_dir / "shared.log").read_bytes()
    sc = scan(raw, 0, 0, final=True)
    assert not sc.torn and sc.end == len(raw)  # every byte is part of a whole frame
    recs = sc.records
    assert [r.seq for r in recs] == list(range(procs * threads * count))
    by_writer: dict[str, list[int]] = {}
    for r in recs:
        who, _, rest = r.data.partition(":")
        i = int(rest.split("|")[0])
        assert r.data == f"{who}:{i}|" + "x" * (i % 50) and r.writer == f"w{who}"
        by_writer.setdefault(who, []).append(i)
    assert len(by_writer) == procs * threads
    assert all(v == list(range(count)) for v in by_writer.values())
    await hive.aclose()


@pytest.mark.parametrize("policy", ["always", "end", "never"])
async def test_fsync_policies_write_the_same_stream(tmp_path: Path, policy: str) -> None:
    store = DirHiveStore(tmp_path, fsync=policy)
    (tmp_path / "t-acme" / "job").mkdir(parents=True)
    await store.create_task("acme", "job", 60, time.time())
    await store.append("acme", "job", "s", [NewRecord("tokens", "a", "w")], time.time())
    await store.append("acme", "job", "s", [NewRecord("end", "", "w")], time.time())
    assert [r.kind for r in await store.read("acme", "job", "s", 0, 10)] == ["tokens", "end"]
