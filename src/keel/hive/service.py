"""The hive service: names, permissions, size limits and quotas over one backend.

Every rule lives here so the HTTP routes, the gateway tee and the CLI apply the same ones:

- a key with an agent id writes only the stream named after that agent; a tenant key
  (no agent) or an admin key writes any stream of its tenant; tasks are tenant-scoped;
- a record larger than ``max_record_bytes`` is refused before anything is written;
- quotas per tenant (``quota_bytes``, ``quota_streams``) are checked before a write. The
  usage is read from the backend at most every ``USAGE_REFRESH_S`` and counted locally in
  between, so several processes may overshoot a quota by what they write in that time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from keel.errors import (
    ConfigError,
    InvalidRequest,
    KeelError,
    PayloadTooLarge,
    PermissionDenied,
)
from keel.gateway.context import Principal
from keel.hive.files import HiveFiles
from keel.hive.framing import record_bytes
from keel.hive.model import (
    FILES_STREAM,
    KINDS,
    REF,
    HiveQuotaExceeded,
    HiveRef,
    HiveStore,
    HiveStreamNotFound,
    HiveTaskNotFound,
    NewRecord,
    Record,
    TaskInfo,
    check_name,
)
from keel.hive.settings import HiveSettings

log = logging.getLogger(__name__)

USAGE_REFRESH_S = 5.0
WAIT_POLL_S = 0.01  # how often a tail waiting for a stream to appear looks
MAX_EXPAND_CHARS = 4_000_000  # text a reference expansion may produce in one call


def open_store(settings: HiveSettings, data_dir: Path, *, prefix: str = "keel:") -> HiveStore:
    """The backend the URL names: ``redis://``/``rediss://``, ``file://`` or a path."""
    url = settings.url or str(data_dir / "hive")
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "valkey"):
        from keel.hive.store_redis import RedisHiveStore

        return RedisHiveStore(url.replace("valkey://", "redis://", 1), prefix=prefix,
                              poll_s=settings.poll_s)
    if scheme == "file":
        path = Path(urlsplit(url).path)
    elif scheme == "" or len(scheme) == 1:  # a path (or a Windows drive letter)
        path = Path(url)
    else:
        raise ConfigError(f"[hive] url {url!r}: use file:///path, a path or redis://host:port")
    from keel.hive.store_dir import DirHiveStore

    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DirHiveStore(path, fsync=settings.fsync, poll_s=settings.poll_s)


@dataclass(slots=True)
class _Usage:
    bytes: int
    streams: set[str]
    at: float


@dataclass
class GcReport:
    dry_run: bool
    tasks: list[TaskInfo] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tasks)

    def to_dict(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "tasks": len(self.tasks), "bytes": self.bytes,
                "deleted" if not self.dry_run else "would_delete":
                    [{"tenant": t.tenant, "task": t.name, "bytes": t.bytes,
                      "idle_s": round(time.time() - t.last_write, 1)} for t in self.tasks]}


class HiveService:
    def __init__(self, store: HiveStore, settings: HiveSettings) -> None:
        self.store = store
        self.settings = settings
        self._usage: dict[str, _Usage] = {}
        self.files = HiveFiles(self)

    # -- permissions --------------------------------------------------------------------

    @staticmethod
    def check_writer(principal: Principal, stream: str) -> None:
        if stream == FILES_STREAM:
            raise PermissionDenied(
                f"the {FILES_STREAM!r} stream is written by the hive itself (one record per "
                "shared file change); write files with PUT .../files/NAME")
        if principal.agent is not None and not principal.admin and principal.agent != stream:
            raise PermissionDenied(
                f"agent {principal.agent!r} may write only its own hive stream "
                f"({principal.agent!r}), not {stream!r}")

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(self, principal: Principal, task: str | None = None,
                          ttl_s: float | None = None) -> TaskInfo:
        return (await self.open_task(principal, task, ttl_s))[0]

    async def open_task(self, principal: Principal, task: str | None = None,
                        ttl_s: float | None = None) -> tuple[TaskInfo, bool]:
        """Create the task, or join it when it exists: ``(info, created)``. A new task
        counts against the tenant's ``max_tasks``."""
        name = check_name(task, "task") if task is not None else "t" + os.urandom(6).hex()
        ttl = self.settings.ttl_s if ttl_s is None else ttl_s
        if not 1 <= ttl <= 30 * 86400:
            raise InvalidRequest("ttl_s must be from 1 to 2592000 (30 days)", param="ttl_s")
        tenant = principal.tenant
        now = time.time()
        existing = await self.store.task(tenant, name)
        if existing is not None and existing.expires() > now:
            return existing, False
        if existing is not None:  # expired and not collected yet: its contents are gone
            await self.store.delete_task(tenant, name)
            self._usage.pop(tenant, None)
        have = sum(t.expires() > now for t in await self.store.tasks(tenant))
        if have >= self.settings.max_tasks:
            raise HiveQuotaExceeded(
                f"tenant {tenant!r} has {have} hive tasks, the limit ([hive] max_tasks = "
                f"{self.settings.max_tasks}); delete tasks or run `keel hive gc`")
        return await self.store.create_task(tenant, name, ttl, time.time()), True

    async def task(self, tenant: str, task: str) -> TaskInfo:
        """The live task: one idle for longer than its ``ttl_s`` is gone, whether or not
        the collector has deleted it yet."""
        info = await self.store.task(tenant, check_name(task, "task"))
        if info is None:
            raise HiveTaskNotFound(f"no hive task {task!r} (create it with POST "
                                   "/v1/hive/tasks or `keel hive` first)")
        if info.expires() <= time.time():
            raise HiveTaskNotFound(
                f"hive task {task!r} expired: nothing was written to it for its ttl_s of "
                f"{info.ttl_s:g} s, so its streams and files are gone; create it again "
                "(POST /v1/hive/tasks) and pass a longer ttl_s if it idles for long")
        return info

    async def live_tasks(self, tenant: str) -> list[TaskInfo]:
        now = time.time()
        return [t for t in await self.store.tasks(tenant) if t.expires() > now]

    @staticmethod
    def check_deleter(principal: Principal) -> None:
        """Deleting a task removes every agent's streams and files: a tenant key (no
        agent) or an admin key only."""
        if principal.agent is not None and not principal.admin:
            raise PermissionDenied(
                f"agent {principal.agent!r} may not delete a hive task (it holds other "
                "agents' streams and files): use a tenant key without an agent, or an "
                "admin key")

    async def delete_task(self, tenant: str, task: str,
                          principal: Principal | None = None) -> int:
        if principal is not None:
            self.check_deleter(principal)
        if await self.store.task(tenant, check_name(task, "task")) is None:
            await self.task(tenant, task)  # the 404 with its hint
        freed = await self.store.delete_task(tenant, task)
        self._usage.pop(tenant, None)
        return freed

    # -- writing --------------------------------------------------------------------------

    def records(self, principal: Principal, stream: str,
                items: Sequence[tuple[str, str]]) -> list[NewRecord]:
        """Validated new records ``(kind, data)`` written by ``principal`` to ``stream``."""
        out = []
        for kind, data in items:
            if kind not in KINDS:
                raise InvalidRequest(f"record kind {kind!r} is not one of {', '.join(KINDS)}",
                                     param="kind")
            size = len(data.encode())
            if size > self.settings.max_record_bytes:
                raise PayloadTooLarge(
                    f"a hive record is {size} bytes; the limit is "
                    f"{self.settings.max_record_bytes} ([hive] max_record_bytes): split it "
                    "into several records")
            out.append(NewRecord(kind, data, principal.agent or stream))
        return out

    async def append(self, principal: Principal, task: str, stream: str,
                     records: Sequence[NewRecord], *, checked: bool = False) -> list[int]:
        if not checked:
            check_name(task, "task")
            check_name(stream, "stream")
        self.check_writer(principal, stream)
        if not records:
            return []
        tenant = principal.tenant
        size = sum(record_bytes(r) for r in records)
        await self.check_quota(tenant, task, stream, size)
        seqs = await self.store.append(tenant, task, stream, records, time.time())
        self.count_write(tenant, task, stream, size)
        return seqs

    async def check_quota(self, tenant: str, task: str, stream: str, size: int) -> None:
        """Raise :class:`HiveQuotaExceeded` when writing ``size`` more bytes to
        ``task/stream`` would pass the tenant's ``quota_streams`` or ``quota_bytes``."""
        usage = await self.current_usage(tenant)
        key = f"{task}/{stream}"
        if key not in usage.streams and len(usage.streams) >= self.settings.quota_streams:
            raise HiveQuotaExceeded(
                f"tenant {tenant!r} has {len(usage.streams)} hive streams, the quota "
                f"([hive] quota_streams = {self.settings.quota_streams}); delete tasks or "
                "run `keel hive gc`")
        if usage.bytes + size > self.settings.quota_bytes:
            raise HiveQuotaExceeded(
                f"tenant {tenant!r} uses {usage.bytes} of {self.settings.quota_bytes} hive "
                f"bytes ([hive] quota_bytes); this write needs {size} more: delete tasks or "
                "run `keel hive gc`")

    def count_write(self, tenant: str, task: str, stream: str, size: int) -> None:
        """Count an append against the tenant's cached usage."""
        u = self._usage.get(tenant)
        if u is not None:
            u.bytes += size
            u.streams.add(f"{task}/{stream}")

    def count_bytes(self, tenant: str, delta: int) -> None:
        """Count a write (or a deletion) against the tenant's cached usage."""
        u = self._usage.get(tenant)
        if u is not None:
            u.bytes = max(0, u.bytes + delta)

    async def current_usage(self, tenant: str) -> _Usage:
        u = self._usage.get(tenant)
        now = time.monotonic()
        if u is None or now - u.at > USAGE_REFRESH_S:
            used, names = await self.store.usage(tenant)
            u = _Usage(used, names, now)
            self._usage[tenant] = u
        return u

    # -- reading --------------------------------------------------------------------------

    async def read(self, tenant: str, task: str, stream: str, start: int = 0,
                   limit: int = 1000) -> list[Record]:
        check_name(stream, "stream")
        info = await self.task(tenant, task)
        recs = await self.store.read(tenant, task, stream, start, limit)
        if not recs and start > 0:
            count = next((s.records for s in info.streams if s.name == stream), 0)
            if start > count:
                raise InvalidRequest(f"offset {start} is past the end of stream {stream!r} "
                                     f"({count} records)", param="offset")
        return recs

    async def tail(self, tenant: str, task: str, stream: str, start: int = 0, *,
                   wait: bool = False) -> AsyncIterator[Record]:
        """Records from ``start`` on, live. ``wait``: a stream not written yet is waited
        for (a reader may subscribe before its writer starts) while the task exists."""
        check_name(task, "task")
        check_name(stream, "stream")
        info = await self.task(tenant, task)
        count = next((s.records for s in info.streams if s.name == stream), None)
        while count is None and wait:
            await asyncio.sleep(WAIT_POLL_S)
            try:
                await self.store.read(tenant, task, stream, 0, 1)
                count = next((s.records for s in (await self.task(tenant, task)).streams
                              if s.name == stream), 0)
            except HiveStreamNotFound:
                continue
        if count is None:
            raise HiveStreamNotFound(f"no stream {stream!r} in hive task {task!r} (tail with "
                                     "wait=true to wait for its writer)")
        if start > count:
            raise InvalidRequest(f"offset {start} is past the end of stream {stream!r} "
                                 f"({count} records)", param="offset")
        return self.store.tail(tenant, task, stream, start)

    async def text(self, tenant: str, task: str, stream: str, start: int = 0,
                   max_chars: int = MAX_EXPAND_CHARS) -> str:
        """The stream's text (tokens and notes) from record ``start``, in order."""
        parts: list[str] = []
        total = 0
        while True:
            recs = await self.read(tenant, task, stream, start, 1000)
            for r in recs:
                if r.kind in ("tokens", "note"):
                    parts.append(r.data)
                    total += len(r.data)
            if len(recs) < 1000 or total > max_chars:
                break
            start = recs[-1].seq + 1
        text = "".join(parts)
        if len(text) > max_chars:
            raise PayloadTooLarge(f"hive stream {task}/{stream} holds more than {max_chars} "
                                  "characters; read it with offsets")
        return text

    async def expand(self, tenant: str, text: str) -> str:
        """Replace every ``hive://task/stream@offset`` in ``text`` with that stream's text."""
        out: list[str] = []
        last = 0
        budget = MAX_EXPAND_CHARS
        for m in REF.finditer(text):
            ref = HiveRef.from_match(m)
            if ".." in ref.task or ".." in ref.stream:
                HiveRef.parse(m.group(0))  # raises: says what a reference looks like
            if ref.file:
                body = await self._file_text(tenant, ref, budget)
            else:
                body = await self.text(tenant, ref.task, ref.stream, ref.offset, budget)
            budget -= len(body)
            out += [text[last:m.start()], body]
            last = m.end()
        out.append(text[last:])
        return "".join(out)

    async def _file_text(self, tenant: str, ref: HiveRef, budget: int) -> str:
        f = await self.files.get(tenant, ref.task, ref.stream, ref.offset)
        try:
            body = f.data.decode()
        except UnicodeDecodeError:
            raise InvalidRequest(f"hive file {ref.stream!r} is not UTF-8 text: read it with "
                                 "GET .../files/NAME instead of expanding it") from None
        if len(body) > budget:
            raise PayloadTooLarge(f"expanding {ref} would exceed {MAX_EXPAND_CHARS} "
                                  "characters")
        return body

    # -- lifecycle ------------------------------------------------------------------------

    async def gc_loop(self, every_s: float) -> None:
        """Delete expired tasks every ``every_s`` seconds, run by one process per period
        when several share the store (:meth:`HiveStore.claim`). Sleeps in between: an idle
        hive costs one wake-up per period."""
        while True:
            await asyncio.sleep(every_s)
            try:
                if await self.store.claim("gc", every_s, time.time()):
                    rep = await self.gc(dry_run=False)
                    if rep.tasks:
                        log.info("hive gc: deleted %d expired task(s), %d bytes",
                                 len(rep.tasks), rep.bytes)
            except KeelError as exc:  # the store is down: try again next period
                log.warning("hive gc failed: %s", exc.message)

    async def gc(self, *, dry_run: bool, now: float | None = None) -> GcReport:
        """Delete (or, dry run, list) every task idle for longer than its TTL."""
        now = time.time() if now is None else now
        report = GcReport(dry_run)
        for info in await self.store.tasks(None):
            if info.expires() <= now:
                report.tasks.append(info)
                if not dry_run:
                    await self.store.delete_task(info.tenant, info.name)
                    self._usage.pop(info.tenant, None)
        return report

    async def report(self, tenant: str | None) -> dict[str, object]:
        """Size and age per tenant: what scratch data there is, and how old."""
        now = time.time()
        per: dict[str, dict[str, float]] = {}
        for t in await self.store.tasks(tenant):
            row = per.setdefault(t.tenant, {"tasks": 0, "streams": 0, "bytes": 0,
                                            "oldest_s": 0.0, "expired": 0})
            row["tasks"] += 1
            row["streams"] += len(t.streams)
            row["bytes"] += t.bytes
            row["oldest_s"] = max(row["oldest_s"], round(now - t.created, 1))
            row["expired"] += t.expires() <= now
        return {"tenants": per, "quota_bytes": self.settings.quota_bytes,
                "quota_streams": self.settings.quota_streams,
                "max_tasks": self.settings.max_tasks}

    async def aclose(self) -> None:
        await self.store.aclose()
