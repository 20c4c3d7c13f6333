"""The Batch API's logic: files, batches, cancel, results and cost, scoped by tenant.

A file is validated completely when it is uploaded (every line, model and schema), so a
batch created from it queues only lines that can run. Creating a batch writes the batch
and all its lines in one transaction, then enqueues one durable job per line; jobs that a
crash left unqueued are enqueued again when the runtime starts (``resume``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

from keel.batch import jsonl, store
from keel.batch.cost import report
from keel.batch.settings import BatchSettings
from keel.errors import InvalidRequest, MissingField, NotFound
from keel.gateway.context import Principal
from keel.providers.registry import ModelRegistry
from keel.storage.sql import Database

log = logging.getLogger("keel.batch")
JSON = dict[str, Any]
WINDOWS = {"24h": 24 * 3600.0}
# OpenAI's metadata limits: 16 pairs, keys up to 64 characters, values up to 512
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512

# (batch id, line numbers) -> queued / dropped from the queue (keel.batch.jobs)
Enqueue = Callable[[str, list[int]], Awaitable[None]]


def _check_metadata(metadata: Any) -> None:
    """OpenAI's rules: at most 16 pairs, string keys up to 64 characters, string values up
    to 512."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidRequest("metadata must be an object of string keys and string values",
                             param="metadata")
    if len(metadata) > MAX_METADATA:
        raise InvalidRequest(f"metadata has {len(metadata)} pairs; the limit is "
                             f"{MAX_METADATA}", param="metadata")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise InvalidRequest(f"metadata[{k!r}] must be a string", param="metadata")
        if len(k) > MAX_METADATA_KEY:
            raise InvalidRequest(f"metadata key {k[:20]!r}... is {len(k)} characters; the "
                                 f"limit is {MAX_METADATA_KEY}", param="metadata")
        if len(v) > MAX_METADATA_VALUE:
            raise InvalidRequest(f"metadata[{k!r}] is {len(v)} characters; the limit is "
                                 f"{MAX_METADATA_VALUE}", param="metadata")


class BatchService:
    def __init__(self, settings: BatchSettings, db: Database, models: ModelRegistry,
                 *, cpu_usd_per_hour: float | None = None) -> None:
        self.settings = settings
        self.db = db
        self.models = models
        self.enqueue: Enqueue | None = None  # set by the capability (the job queue)
        self.drop: Enqueue | None = None
        self.on_work: Callable[[], None] = lambda: None  # pokes the scaler
        self._tasks: set[asyncio.Task[None]] = set()
        self.cpu_usd_per_hour = (settings.cpu_usd_per_hour if cpu_usd_per_hour is None
                                 else cpu_usd_per_hour)

    @staticmethod
    def _tenant(p: Principal) -> str | None:
        return None if p.admin else p.tenant  # admins see every tenant's batches

    # -- files --------------------------------------------------------------------------

    async def upload(self, p: Principal, filename: str, purpose: str, content: bytes) -> JSON:
        if not purpose.strip():
            raise MissingField("the `purpose` field is empty; set it to \"batch\"",
                               param="purpose")
        if purpose != "batch":
            raise InvalidRequest(f"purpose {purpose!r} is not supported; keel stores files "
                                 "for batches: use purpose \"batch\"", param="purpose")
        s = self.settings
        parsed = jsonl.parse(content, self.models, max_bytes=s.max_file_bytes,
                             max_lines=s.max_lines)
        row = await self.db.run(lambda c: store.insert_file(
            c, tenant=p.tenant, filename=filename[:256] or "batch.jsonl", content=content,
            n_lines=len(parsed.lines), endpoint=parsed.endpoint))
        return row.public()

    async def file(self, p: Principal, file_id: str) -> store.FileRow:
        row = await self.db.run(lambda c: store.get_file(c, file_id, self._tenant(p)))
        if row is None:
            raise NotFound(f"no file {file_id!r}", param="file_id")
        return row

    async def files(self, p: Principal, purpose: str | None, limit: int) -> list[JSON]:
        rows = await self.db.run(lambda c: store.list_files(c, self._tenant(p),
                                                            purpose=purpose, limit=limit))
        return [r.public() for r in rows]

    async def delete_file(self, p: Principal, file_id: str) -> JSON:
        row = await self.file(p, file_id)
        if await self.db.run(lambda c: store.file_in_use(c, file_id)):
            raise InvalidRequest(f"file {file_id!r} is the input of a running batch; cancel "
                                 "the batch first", param="file_id")
        await self.db.run(lambda c: store.delete_file(c, row.id))
        return {"id": row.id, "object": "file", "deleted": True}

    async def content(self, p: Principal, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes: the upload, or an output/error file rendered from the lines."""
        row = await self.file(p, file_id)
        if row.kind == "input":
            yield await self.db.run(lambda c: store.file_content(c, row.id))
            return
        assert row.batch_id is not None
        status = store.DONE if row.kind == "output" else store.FAILED
        after: int | None = 0
        while after is not None:
            part, after = await self.db.run(partial(
                store.render_chunk, batch_id=row.batch_id, status=status, after=after))
            if part:
                yield part

    # -- batches ------------------------------------------------------------------------

    async def create(self, p: Principal, body: JSON) -> JSON:
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        window, metadata = body.get("completion_window", "24h"), body.get("metadata")
        if not isinstance(file_id, str) or not file_id:
            raise MissingField("missing required field 'input_file_id': the id "
                               "`POST /v1/files` returned", param="input_file_id")
        if endpoint is None:
            raise MissingField("missing required field 'endpoint': use "
                               f"{' or '.join(jsonl.ENDPOINTS)}", param="endpoint")
        if endpoint not in jsonl.ENDPOINTS:
            raise InvalidRequest(f"endpoint {endpoint!r} is not supported; use "
                                 f"{' or '.join(jsonl.ENDPOINTS)}", param="endpoint")
        if window is None:
            raise MissingField("completion_window is null; use \"24h\" (or leave it out)",
                               param="completion_window")
        if window not in WINDOWS:
            raise InvalidRequest(f"completion_window {window!r} is not supported; use "
                                 "\"24h\"", param="completion_window")
        _check_metadata(metadata)
        if self.enqueue is None:
            raise InvalidRequest("batches cannot run: the job runtime is not available")
        src = await self.file(p, file_id)
        if src.kind != "input":
            raise InvalidRequest(f"file {file_id!r} is a batch output, not an input file",
                                 param="input_file_id")
        if src.endpoint != endpoint:
            raise InvalidRequest(f"the lines of file {file_id!r} call {src.endpoint} but the "
                                 f"batch's endpoint is {endpoint}; they must match",
                                 param="endpoint")
        raw = await self.db.run(lambda c: store.file_content(c, src.id))
        parsed = jsonl.parse(raw, self.models, max_bytes=len(raw) + 1,  # checked at upload;
                             max_lines=self.settings.max_lines)  # models may have changed

        def insert(c: Any) -> store.BatchRow:
            return store.insert_batch(
                c, tenant=p.tenant, key_id=p.key_id, agent=p.agent, input_file=src,
                completion_window=window, metadata=metadata, body_lines=parsed.lines,
                expires_in_s=WINDOWS[window])

        batch = await self.db.run(insert)
        # Queueing runs on after the answer (a few ms a line): the lines are stored, and
        # a crash before they are all queued is repaired at the next start (``resume``).
        line_nos = [n for n, _, _ in parsed.lines]
        queued = asyncio.create_task(self._enqueue(batch.id, line_nos))
        self._tasks.add(queued)
        queued.add_done_callback(self._tasks.discard)
        self.on_work()
        return await self.public(batch)

    async def _enqueue(self, batch_id: str, line_nos: list[int]) -> None:
        assert self.enqueue is not None
        try:
            await self.enqueue(batch_id, line_nos)
        except Exception:  # stays in the table; resume() queues it at the next start
            log.exception("batch %s: queueing its lines failed", batch_id)

    async def aclose(self) -> None:
        """Let lines being queued finish queueing (resume() would redo it otherwise)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def resume(self) -> None:
        """Enqueue the open lines of every active batch again (idempotent: a line's job has
        a fixed id), so a crash between writing a batch and queueing it loses nothing."""
        if self.enqueue is None:
            return
        for batch_id in await self.db.run(store.active_batches):
            todo = await self.db.run(partial(store.queued_line_numbers, batch_id=batch_id))
            if todo:
                await self.enqueue(batch_id, todo)
            else:
                await self.db.run(partial(store.finalize_if_done, batch_id=batch_id))
        self.on_work()

    async def batch(self, p: Principal, batch_id: str) -> store.BatchRow:
        row = await self.db.run(lambda c: store.get_batch(c, batch_id, self._tenant(p)))
        if row is None:
            raise NotFound(f"no batch {batch_id!r}", param="batch_id")
        return row

    async def get(self, p: Principal, batch_id: str) -> JSON:
        return await self.public(await self.batch(p, batch_id))

    async def list(self, p: Principal, after: str | None, limit: int) -> JSON:
        """A page of batches, newest first; ``after`` is the ``last_id`` of the page
        before. An ``after`` that names no batch of the caller's is a 400 (a silent first
        page would make a paging client loop)."""
        if after is not None and await self.db.run(
                lambda c: store.get_batch(c, after, self._tenant(p))) is None:
            raise InvalidRequest(f"after={after!r} is not the id of one of your batches; "
                                     "pass the last_id of the previous page", param="after")
        rows = await self.db.run(lambda c: store.list_batches(c, self._tenant(p),
                                                              after=after, limit=limit + 1))
        data = [await self.public(r) for r in rows[:limit]]
        return {"object": "list", "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

    async def cancel(self, p: Principal, batch_id: str) -> JSON:
        row = await self.batch(p, batch_id)
        if row.status not in store.ACTIVE:
            raise InvalidRequest(f"batch {batch_id!r} is {row.status} and cannot be "
                                 "cancelled", param="batch_id")
        queued = await self.db.run(lambda c: store.queued_line_numbers(
            c, batch_id, (store.QUEUED,)))
        await self.db.run(lambda c: store.request_cancel(c, batch_id))
        await self.db.run(lambda c: store.finalize_if_done(c, batch_id))
        if self.drop is not None and queued:  # their jobs leave the queue too
            try:
                await self.drop(batch_id, queued)
            except Exception as exc:  # the lines are cancelled already; jobs skip them
                log.warning("batch %s: dropping queued jobs failed: %s", batch_id, exc)
        return await self.get(p, batch_id)

    async def public(self, b: store.BatchRow) -> JSON:
        n = await self.db.run(lambda c: store.counts(c, b.id))
        t = await self.db.run(lambda c: store.totals(c, b.id))

        def ts(v: float | None) -> int | None:
            return None if v is None else int(v)

        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": b.errors,
            "input_file_id": b.input_file_id, "completion_window": b.completion_window,
            "status": b.status, "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id, "created_at": int(b.created_at),
            "in_progress_at": ts(b.in_progress_at), "expires_at": ts(b.expires_at),
            "finalizing_at": ts(b.finalizing_at), "completed_at": ts(b.completed_at),
            "failed_at": ts(b.failed_at), "expired_at": None, "cancelling_at": ts(b.cancelling_at),
            "cancelled_at": ts(b.cancelled_at),
            "request_counts": {"total": b.total, "completed": n.get(store.DONE, 0),
                               "failed": n.get(store.FAILED, 0)},
            "metadata": b.metadata,
            "usage": {"input_tokens": t.prompt_tokens, "output_tokens": t.completion_tokens,
                      "total_tokens": t.prompt_tokens + t.completion_tokens,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
            "keel": {"cancelled": n.get(store.CANCELLED, 0), "running": n.get(store.RUNNING, 0),
                     "queued": n.get(store.QUEUED, 0), "cpu_s": round(t.cpu_s, 3),
                     "schema_checked": t.schema_checked, "schema_failures": t.schema_failures},
        }

    async def cost(self, p: Principal, batch_id: str) -> JSON:
        row = await self.batch(p, batch_id)
        def read(c: Any) -> tuple[Any, ...]:
            return (store.totals(c, row.id), store.totals(c, row.id, on_local=True),
                    store.upstream_models(c, row.id), store.line_stats(c, row.id))

        t, local, upstream, stats = await self.db.run(read)
        out = report(t, local, upstream, stats, self.models.specs(), self.cpu_usd_per_hour)
        out["batch_id"] = row.id
        return out
