"""The hive on a POSIX directory: local disk, or an NFS/EFS mount shared by machines.

Layout: ``ROOT/<tenant>/<task>/task.json``, one ``<stream>.log`` per stream, written
with :mod:`keel.hive.framing` frames, and ``files/`` (shared files:
:mod:`keel.hive.files_dir`). An append opens the file ``O_APPEND``, takes an
exclusive ``flock`` (on Linux NFS clients it becomes an NFS byte-range lock, so writers on
different machines exclude each other), checks the file ends where it last saw it (else
re-reads the tail, truncating a torn frame a crashed writer left), writes the whole batch
in one ``write()`` and releases. Durability (``[hive] fsync``): ``end`` (default) fsyncs
the end-of-stream record, ``always`` every append, ``never`` leaves it to the OS; readers
on the same machine see a record as soon as ``write()`` returns, whatever the policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from keel.errors import StorageError
from keel.hive.files_dir import DirFilesMixin
from keel.hive.framing import encode_all, scan
from keel.hive.model import (
    NAME,
    HiveConflict,
    HiveStreamNotFound,
    HiveTaskNotFound,
    NewRecord,
    Record,
    StreamInfo,
    TaskInfo,
)
from keel.hive.watch import FileWatch

_MAX_READ = 64 << 20


@dataclass(slots=True)
class _Tail:
    end: int
    next_seq: int
    ended: bool
    last_ts: float = 0.0


def tenant_dir(tenant: str) -> str:
    """A tenant as one safe path component (any string maps to a distinct name)."""
    if NAME.match(tenant) and ".." not in tenant:
        return "t-" + tenant
    return "x-" + tenant.encode().hex()


def _tenant_of(dirname: str) -> str | None:
    if dirname.startswith("t-"):
        return dirname[2:]
    if dirname.startswith("x-"):
        with contextlib.suppress(ValueError):
            return bytes.fromhex(dirname[2:]).decode()
    return None


class DirHiveStore(DirFilesMixin):
    def __init__(self, root: Path, *, fsync: str = "end", poll_s: float = 1.0) -> None:
        self.root = root
        self.fsync = fsync
        self.poll_s = poll_s
        self._locks: dict[str, threading.Lock] = {}
        self._tails: dict[str, _Tail] = {}
        self._held: dict[str, int] = {}  # file locks this store holds: token -> fd
        self._tmp_seq = itertools.count()

    def __repr__(self) -> str:
        return f"DirHiveStore({str(self.root)!r})"

    def _task_dir(self, tenant: str, task: str) -> Path:
        return self.root / tenant_dir(tenant) / task

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(self, tenant: str, task: str, ttl_s: float, now: float) -> TaskInfo:
        d = self._task_dir(tenant, task)
        meta = d / "task.json"
        if not meta.exists():
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = d / f".task.json.{os.getpid()}.{threading.get_ident()}"
            tmp.write_text(json.dumps({"created": now, "ttl_s": ttl_s}))
            with contextlib.suppress(FileExistsError):
                os.link(tmp, meta)  # atomic create: a concurrent creator keeps its own
            tmp.unlink()
        info = await self.task(tenant, task)
        assert info is not None
        return info

    async def task(self, tenant: str, task: str) -> TaskInfo | None:
        return await asyncio.to_thread(self._task_sync, tenant, self._task_dir(tenant, task))

    def _task_sync(self, tenant: str, d: Path) -> TaskInfo | None:
        try:
            meta = json.loads((d / "task.json").read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError) as exc:
            raise StorageError(f"hive task {d.name!r}: unreadable task.json ({exc})") from None
        info = TaskInfo(tenant, d.name, float(meta["created"]), float(meta["ttl_s"]),
                        float(meta["created"]))
        for log in sorted(d.glob("*.log")):
            with contextlib.suppress(FileNotFoundError):
                info.streams.append(self._stream_info(log))
        info.files = self.files_sync(d / "files")
        if info.streams:
            info.last_write = max(info.last_write, *(s.last_ts for s in info.streams))
        return info

    def _stream_info(self, log: Path) -> StreamInfo:
        st = log.stat()
        tail = self._tails.get(str(log))
        if tail is None or tail.end != st.st_size:
            with open(log, "rb") as fh:
                sc = scan(fh.read(), 0, 0, want=False)
            tail = _Tail(sc.end, sc.next_seq, sc.ended)
        return StreamInfo(log.stem, tail.next_seq, st.st_size, tail.ended, st.st_mtime)

    async def tasks(self, tenant: str | None) -> list[TaskInfo]:
        return await asyncio.to_thread(self._tasks_sync, tenant)

    def _tasks_sync(self, tenant: str | None) -> list[TaskInfo]:
        if tenant is not None:
            dirs = [(tenant, self.root / tenant_dir(tenant))]
        else:
            dirs = [(t, p) for p in sorted(self.root.glob("*"))
                    if (t := _tenant_of(p.name)) is not None]
        out: list[TaskInfo] = []
        for t, td in dirs:
            for d in sorted(td.glob("*")):
                info = self._task_sync(t, d)
                if info is not None:
                    out.append(info)
        return out

    async def delete_task(self, tenant: str, task: str) -> int:
        d = self._task_dir(tenant, task)
        info = await self.task(tenant, task)
        if info is None:
            return 0
        # rename first: a writer that races the delete fails cleanly instead of
        # recreating half a task
        trash = d.with_name(f".deleted-{task}-{time.time_ns()}")
        try:
            os.rename(d, trash)
        except FileNotFoundError:
            return 0
        await asyncio.to_thread(shutil.rmtree, trash, True)
        for log in info.streams:
            self._tails.pop(str(d / f"{log.name}.log"), None)
        return info.bytes

    # -- streams --------------------------------------------------------------------------

    async def append(self, tenant: str, task: str, stream: str,
                     records: Sequence[NewRecord], now: float) -> list[int]:
        d = self._task_dir(tenant, task)
        if self.fsync == "always":
            return await asyncio.to_thread(self.append_sync, d, stream, records, now)
        return self.append_sync(d, stream, records, now)

    def append_sync(self, d: Path, stream: str, records: Sequence[NewRecord],
                     now: float) -> list[int]:
        path = str(d / f"{stream}.log")
        lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except (FileNotFoundError, NotADirectoryError):
                raise HiveTaskNotFound(f"no hive task {d.name!r}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink == 0:  # the task was deleted under us
                    raise HiveTaskNotFound(f"no hive task {d.name!r}")
                size = os.fstat(fd).st_size
                tail = self._tails.get(path)
                if tail is None or tail.end != size:
                    tail = self._repair(fd, tail, size)
                if tail.ended:
                    raise HiveConflict(f"hive stream {stream!r} has ended (an 'end' record "
                                       "was written); write to a new stream")
                data = encode_all(tail.next_seq, now, records)
                written = os.write(fd, data)
                if written != len(data):
                    os.ftruncate(fd, tail.end)
                    raise StorageError(f"hive stream {stream!r}: short write (disk full?)")
                ends = any(r.kind == "end" for r in records)
                if self.fsync == "always" or (ends and self.fsync == "end"):
                    os.fsync(fd)
                first = tail.next_seq
                self._tails[path] = _Tail(tail.end + len(data), first + len(records), ends, now)
                return list(range(first, first + len(records)))
            finally:
                os.close(fd)  # releases the flock

    def _repair(self, fd: int, tail: _Tail | None, size: int) -> _Tail:
        """Find the real end of the stream (we hold the lock); cut a torn frame off."""
        base, seq = (tail.end, tail.next_seq) if tail and size > tail.end else (0, 0)
        ended = tail.ended if tail and base else False
        sc = scan(os.pread(fd, size - base, base), base, seq, want=False, final=True)
        if sc.torn or sc.end != size:
            os.ftruncate(fd, sc.end)
        return _Tail(sc.end, sc.next_seq, ended or sc.ended)

    def _log(self, tenant: str, task: str, stream: str) -> str:
        d = self._task_dir(tenant, task)
        path = d / f"{stream}.log"
        if not path.exists():
            if not (d / "task.json").exists():
                raise HiveTaskNotFound(f"no hive task {task!r}")
            raise HiveStreamNotFound(f"no stream {stream!r} in hive task {task!r}")
        return str(path)

    async def read(self, tenant: str, task: str, stream: str, start: int,
                   limit: int) -> list[Record]:
        path = self._log(tenant, task, stream)
        out: list[Record] = []
        async for rec in self._records(path, start, live=False):
            out.append(rec)
            if len(out) >= limit:
                break
        return out

    def tail(self, tenant: str, task: str, stream: str, start: int) -> AsyncIterator[Record]:
        path = self._log(tenant, task, stream)
        return self._records(path, start, live=True)

    async def _records(self, path: str, start: int, *, live: bool) -> AsyncIterator[Record]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HiveStreamNotFound("the hive stream was deleted") from None
        watch = FileWatch(path) if live else None
        pos, seq = 0, 0
        try:
            while True:
                st = os.fstat(fd)
                got = False
                if st.st_size > pos:
                    buf = os.pread(fd, min(st.st_size - pos, _MAX_READ), pos)
                    sc = scan(buf, pos, seq)
                    pos, seq = sc.end, sc.next_seq
                    for rec in sc.records:
                        got = True
                        if rec.seq >= start:
                            yield rec
                        if rec.kind == "end":
                            return
                if got:
                    continue
                if not live or st.st_nlink == 0:
                    return
                assert watch is not None
                await watch.wait(self.poll_s)
        finally:
            if watch is not None:
                watch.close()
            os.close(fd)

    async def usage(self, tenant: str) -> tuple[int, set[str]]:
        return await asyncio.to_thread(self._usage_sync, tenant)

    def _usage_sync(self, tenant: str) -> tuple[int, set[str]]:
        total, names = 0, set()
        for log in (self.root / tenant_dir(tenant)).glob("*/*.log"):
            with contextlib.suppress(FileNotFoundError):
                total += log.stat().st_size
                names.add(f"{log.parent.name}/{log.stem}")
        for f in (self.root / tenant_dir(tenant)).glob("*/files/[!.]*"):
            with contextlib.suppress(FileNotFoundError):
                total += f.stat().st_size
        return total, names

    async def claim(self, job: str, every_s: float, now: float) -> bool:
        return await asyncio.to_thread(self._claim_sync, job, every_s, now)

    def _claim_sync(self, job: str, every_s: float, now: float) -> bool:
        """Under an ``flock`` on ``ROOT/.claim-<job>``: the last run's time, then ours."""
        fd = os.open(self.root / f".claim-{job}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process is deciding right now
            raw = os.pread(fd, 64, 0)
            with contextlib.suppress(ValueError):
                if raw and now - float(raw) < every_s * 0.9:
                    return False  # another process ran it this period
            stamp = repr(now).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, stamp, 0)
            return True
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        self._tails.clear()
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


