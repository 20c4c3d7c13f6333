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
REF = re.compile(r"hive://([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})"
                 r"(?:@(\d{1,12}))?")


class HiveTaskNotFound(NotFound):
    code = "hive_task_not_found"


class HiveStreamNotFound(NotFound):
    code = "hive_stream_not_found"


class HiveConflict(KeelError):
    http_status = 409
    type = "invalid_request_error"
    code = "hive_conflict"


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


@dataclass(slots=True)
class TaskInfo:
    tenant: str
    name: str
    created: float
    ttl_s: float
    last_write: float
    streams: list[StreamInfo] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.streams)

    def expires(self) -> float:
        return max(self.created, self.last_write) + self.ttl_s

    def to_dict(self) -> dict[str, object]:
        return {"tenant": self.tenant, "name": self.name, "created": self.created,
                "ttl_s": self.ttl_s, "last_write": self.last_write,
                "expires": self.expires(), "bytes": self.bytes,
                "streams": [dataclasses.asdict(s) for s in self.streams]}


@dataclass(frozen=True, slots=True)
class HiveRef:
    """``hive://task/stream@offset``: what workflows and tools pass instead of the text."""

    task: str
    stream: str
    offset: int = 0

    @classmethod
    def parse(cls, text: str) -> HiveRef:
        m = REF.fullmatch(text.strip())
        if m is None or ".." in m.group(1) or ".." in m.group(2):
            raise InvalidRequest(f"invalid hive reference {text[:100]!r}: write "
                                 "hive://TASK/STREAM or hive://TASK/STREAM@OFFSET", param="ref")
        return cls(m.group(1), m.group(2), int(m.group(3) or 0))

    def __str__(self) -> str:
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
        """Bytes stored for ``tenant`` and its streams as ``task/stream`` (for quotas)."""

    async def aclose(self) -> None: ...
