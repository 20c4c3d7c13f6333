"""The hive's vocabulary and its port: tasks, streams, records, references, errors.

A hive is a set of tasks per tenant; a task holds named append-only streams (one writer
each) and is collected after ``ttl_s`` without a write. Every record has a sequence
number (0, 1, 2... per stream), a timestamp, its writer and a kind. Backends
(:class:`HiveStore`) are chosen by URL: a POSIX directory or Redis/Valkey Streams.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from keel.errors import InvalidRequest, KeelError, NotFound

Kind = Literal["tokens", "note", "file", "end"]
KINDS: tuple[str, ...] = ("tokens", "note", "file", "end")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_N = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
# hive://TASK/STREAM[@OFFSET] or hive://TASK/files/NAME[@VERSION]
REF = re.compile(rf"hive://({_N})/(?:files/({_N})|({_N}))(?:@(\d{{1,12}}))?")
FILES_STREAM = "files"  # the stream the hive itself writes a record to per file change


class HiveTaskNotFound(NotFound):
    code = "hive_task_not_found"


class HiveStreamNotFound(NotFound):
    code = "hive_stream_not_found"


class HiveFileNotFound(NotFound):
    code = "hive_file_not_found"


class HiveConflict(KeelError):
    http_status = 409
    type = "invalid_request_error"
    code = "hive_conflict"


class HiveVersionMismatch(KeelError):
    """A conditional file write whose expected version is not the current one."""

    http_status = 412
    type = "invalid_request_error"
    code = "hive_version_mismatch"


class HivePreconditionRequired(KeelError):
    http_status = 428
    type = "invalid_request_error"
    code = "hive_precondition_required"


class HiveFileLocked(KeelError):
    http_status = 423
    type = "invalid_request_error"
    code = "hive_file_locked"


class HiveQuotaExceeded(KeelError):
    http_status = 429
    type = "insufficient_quota"
    code = "hive_quota_exceeded"


def check_name(value: str, what: str) -> str:
    """A task or stream name: letters, digits, ``_.-``, at most 64, never ``..``-like."""
    if not isinstance(value, str) or not NAME.match(value) or ".." in value:
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidRequest(
            f"invalid {what} name {shown!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit (no '/', no '..')", param=what)
    return value


@dataclass(frozen=True, slots=True)
class NewRecord:
    kind: str
    data: str
    writer: str


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    ts: float
    writer: str
    kind: str
    data: str

    def to_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "ts": self.ts, "writer": self.writer, "kind": self.kind,
                "data": self.data}


@dataclass(slots=True)
class StreamInfo:
    name: str
    records: int
    bytes: int
    ended: bool
    last_ts: float


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One shared file of a task: its current version (1, 2, ...) and size."""

    name: str
    version: int
    size: int
    ts: float
    writer: str

    def etag(self) -> str:
        return f'"{self.version}"'


@dataclass(frozen=True, slots=True)
class SharedFile:
    info: FileInfo
    data: bytes


@dataclass(frozen=True, slots=True)
class FileLock:
    """An exclusive lock on one shared file, for a read-modify-write (see ``file_lock``)."""

    tenant: str
    task: str
    name: str
    token: str


@dataclass(slots=True)
class TaskInfo:
    tenant: str
    name: str
    created: float
    ttl_s: float
    last_write: float
    streams: list[StreamInfo] = field(default_factory=list)
    files: list[FileInfo] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.streams) + sum(f.size for f in self.files)

    def expires(self) -> float:
        return max(self.created, self.last_write) + self.ttl_s

    def to_dict(self) -> dict[str, object]:
        return {"tenant": self.tenant, "name": self.name, "created": self.created,
                "ttl_s": self.ttl_s, "last_write": self.last_write,
                "expires": self.expires(), "bytes": self.bytes,
                "streams": [dataclasses.asdict(s) for s in self.streams],
                "files": [dataclasses.asdict(f) for f in self.files]}


@dataclass(frozen=True, slots=True)
class HiveRef:
    """``hive://task/stream@offset`` or ``hive://task/files/NAME@version``: what workflows
    and tools pass instead of the text. ``file``: the reference names a shared file
    (``offset`` is then the version it was written at, 0 = the current one)."""

    task: str
    stream: str
    offset: int = 0
    file: bool = False

    @classmethod
    def parse(cls, text: str) -> HiveRef:
        m = REF.fullmatch(text.strip())
        if m is None or any(".." in (g or "") for g in m.groups()[:3]):
            raise InvalidRequest(f"invalid hive reference {text[:100]!r}: write "
                                 "hive://TASK/STREAM[@OFFSET] or hive://TASK/files/NAME"
                                 "[@VERSION]", param="ref")
        return cls.from_match(m)

    @classmethod
    def from_match(cls, m: re.Match[str]) -> HiveRef:
        task, fname, stream, num = m.groups()
        if fname is not None:
            return cls(task, fname, int(num or 0), True)
        return cls(task, stream, int(num or 0))

    def __str__(self) -> str:
        if self.file:
            at = f"@{self.offset}" if self.offset else ""
            return f"hive://{self.task}/files/{self.stream}{at}"
        return f"hive://{self.task}/{self.stream}@{self.offset}"


class HiveStore(Protocol):
    """One backend. Names are checked by the caller; tenants are any string."""

    async def create_task(self, tenant: str, task: str, ttl_s: float,
                          now: float) -> TaskInfo: ...

    async def task(self, tenant: str, task: str) -> TaskInfo | None:
        """The task with its streams, or ``None``."""

    async def tasks(self, tenant: str | None) -> list[TaskInfo]:
        """Every task of ``tenant`` (every tenant when ``None``), with streams."""

    async def delete_task(self, tenant: str, task: str) -> int:
        """Delete a task and its streams; the bytes freed (0 when it did not exist)."""

    async def append(self, tenant: str, task: str, stream: str,
                     records: Sequence[NewRecord], now: float) -> list[int]:
        """Append in order, all or nothing; the sequence numbers given. Creates the stream."""

    async def read(self, tenant: str, task: str, stream: str, start: int,
                   limit: int) -> list[Record]:
        """Records with ``seq >= start`` (at most ``limit``), oldest first."""

    def tail(self, tenant: str, task: str, stream: str, start: int) -> AsyncIterator[Record]:
        """Records from ``start`` on, live, until an ``end`` record (included)."""

    async def usage(self, tenant: str) -> tuple[int, set[str]]:
        """Bytes stored for ``tenant`` (streams and files) and its streams as
        ``task/stream`` (for quotas)."""

    # -- shared files: any writer of the tenant, serialized by version or by a lock ------

    async def file_get(self, tenant: str, task: str, name: str) -> SharedFile | None:
        """The file's bytes and version, read atomically (never a torn file); ``None``
        when the file does not exist. Raises :class:`HiveTaskNotFound` without the task."""

    async def files(self, tenant: str, task: str) -> list[FileInfo]: ...

    async def file_put(self, tenant: str, task: str, name: str, data: bytes,
                       expect: int | None, writer: str, now: float,
                       lock: FileLock | None = None, wait_s: float = 10.0) -> FileInfo:
        """Write the whole file if its current version is ``expect`` (0: it must not
        exist; ``None``: any), else :class:`HiveVersionMismatch`. Appends a ``file``
        record to the task's ``files`` stream. Waits up to ``wait_s`` while another
        holder has the file's lock (:class:`HiveFileLocked` after); ``lock``: ours."""

    async def file_delete(self, tenant: str, task: str, name: str, expect: int | None,
                          writer: str, now: float, lock: FileLock | None = None,
                          wait_s: float = 10.0) -> FileInfo:
        """Delete the file at version ``expect``; what was deleted."""

    async def file_lock(self, tenant: str, task: str, name: str, ttl_s: float,
                        wait_s: float) -> FileLock:
        """Take the file's exclusive lock (waiting up to ``wait_s``). A holder that dies
        cannot block others: the directory's ``flock`` goes with its process, Redis's
        lock key expires after ``ttl_s``."""

    async def file_unlock(self, lock: FileLock) -> None: ...

    async def claim(self, job: str, every_s: float, now: float) -> bool:
        """True for one caller per ``every_s`` among every process sharing the store (a
        periodic job that must run once, not once per process)."""

    async def aclose(self) -> None: ...
