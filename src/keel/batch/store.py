"""Batch files, batches and their lines (SQL Core, SQLite or Postgres).

DBOS owns the queue; these tables are the batch's truth. A line is written once: the
result update only applies while the line is still open (``queued``/``running``), so a
line re-run after a worker died cannot add a second output row. The output and error
files are rendered from the lines on read, one row per ``custom_id``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    inspect,
    select,
    text,
    update,
)

from keel.storage.migrations import Migration

JSON = dict[str, Any]

# line states
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
OPEN = (QUEUED, RUNNING)
# batch states (OpenAI's names)
IN_PROGRESS, FINALIZING, COMPLETED, CANCELLING = (
    "in_progress", "finalizing", "completed", "cancelling")
BATCH_CANCELLED, BATCH_FAILED = "cancelled", "failed"
ACTIVE = (IN_PROGRESS, CANCELLING)

meta = MetaData()
files = Table(
    "batch_files", meta,
    Column("id", String(48), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("purpose", String(32), nullable=False),  # batch | batch_output
    Column("filename", String(256), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("lines", Integer, nullable=False),
    Column("endpoint", String(64)),  # the url every line calls (uploads)
    Column("batch_id", String(48)),  # output / error files: rendered from the lines
    Column("kind", String(16), nullable=False),  # input | output | error
    Column("content", LargeBinary),  # uploads only
    Index("batch_files_tenant", "tenant", "created_at"),
)
batches = Table(
    "batches", meta,
    Column("id", String(48), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("agent", String(128)),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(48), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("metadata", Text),
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("in_progress_at", Float),
    Column("finalizing_at", Float),
    Column("completed_at", Float),
    Column("cancelling_at", Float),
    Column("cancelled_at", Float),
    Column("expires_at", Float),
    Column("output_file_id", String(48)),
    Column("error_file_id", String(48)),
    Column("failed_at", Float),
    Column("errors", Text),  # OpenAI's batch-level errors list, when the batch failed
    Index("batches_tenant", "tenant", "created_at"),
    Index("batches_status", "status"),
)
lines = Table(
    "batch_lines", meta,
    Column("batch_id", String(48), primary_key=True),
    Column("line_no", Integer, primary_key=True),  # 1-based, as in the input file
    Column("custom_id", String(512), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("status_code", Integer),
    Column("response", Text),  # the response body (done) or error body (failed)
    Column("error", Text),  # {"code", "message"} when failed
    Column("request_id", String(64)),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", Float, nullable=False, default=0.0),
    Column("cpu_s", Float, nullable=False, default=0.0),
    Column("wall_s", Float, nullable=False, default=0.0),
    Column("schema_ok", Integer),  # 1/0 when the line asked for a json_schema; else NULL
    # the model that served the line (or the one it asked for when no call was made) and
    # whether it ran on the local provider (NULL: not known, e.g. the call timed out)
    Column("model", String(128)),
    Column("on_local", Integer),
    Index("batch_lines_status", "batch_id", "status"),
)



def _add_columns(c: Connection) -> None:
    """Columns added after 0001 (a database created by 0001 today has them already)."""
    wanted = {"batches": (("failed_at", "FLOAT"), ("errors", "TEXT")),
              "batch_lines": (("model", "VARCHAR(128)"), ("on_local", "INTEGER"))}
    for table, cols in wanted.items():
        have = {col["name"] for col in inspect(c).get_columns(table)}
        for name, kind in cols:
            if name not in have:
                c.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


MIGRATIONS = [
    Migration("batch/0001_tables", lambda c: meta.create_all(c, tables=[files, batches, lines])),
    Migration("batch/0002_failed_batches_and_line_models", _add_columns),
]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _json(v: Any) -> str:
    return orjson.dumps(v).decode()


# -- files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRow:
    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    created_at: float
    lines: int
    endpoint: str | None
    batch_id: str | None
    kind: str

    def public(self) -> JSON:
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": int(self.created_at), "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "status_details": None,
                "expires_at": None}


_FILE_COLS = [files.c.id, files.c.tenant, files.c.purpose, files.c.filename, files.c.bytes,
              files.c.created_at, files.c.lines, files.c.endpoint, files.c.batch_id,
              files.c.kind]


def _file(r: Any) -> FileRow:
    return FileRow(*r)


def insert_file(c: Connection, *, tenant: str, filename: str, content: bytes, n_lines: int,
                endpoint: str) -> FileRow:
    row = FileRow(id=new_id("file"), tenant=tenant, purpose="batch", filename=filename,
                  bytes=len(content), created_at=time.time(), lines=n_lines,
                  endpoint=endpoint, batch_id=None, kind="input")
    c.execute(files.insert().values(**row.__dict__, content=content))
    return row


def get_file(c: Connection, file_id: str, tenant: str | None) -> FileRow | None:
    q = select(*_FILE_COLS).where(files.c.id == file_id)
    if tenant is not None:
        q = q.where(files.c.tenant == tenant)
    r = c.execute(q).first()
    return None if r is None else _file(r)


def list_files(c: Connection, tenant: str | None, *, purpose: str | None, limit: int
               ) -> list[FileRow]:
    q = select(*_FILE_COLS)
    if tenant is not None:
        q = q.where(files.c.tenant == tenant)
    if purpose:
        q = q.where(files.c.purpose == purpose)
    q = q.order_by(files.c.created_at.desc()).limit(limit)
    return [_file(r) for r in c.execute(q)]


def file_content(c: Connection, file_id: str) -> bytes:
    return bytes(c.execute(select(files.c.content).where(files.c.id == file_id)).scalar_one()
                 or b"")


def delete_file(c: Connection, file_id: str) -> None:
    c.execute(files.delete().where(files.c.id == file_id))


def file_in_use(c: Connection, file_id: str) -> bool:
    return c.execute(select(batches.c.id).where(and_(batches.c.input_file_id == file_id,
                                                     batches.c.status.in_(ACTIVE)))
                     .limit(1)).first() is not None


# -- batches ---------------------------------------------------------------------------------


@dataclass
class BatchRow:
    id: str
    tenant: str
    key_id: str
    agent: str | None
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    metadata: JSON | None
    total: int
    created_at: float
    in_progress_at: float | None
    finalizing_at: float | None
    completed_at: float | None
    cancelling_at: float | None
    cancelled_at: float | None
    expires_at: float | None
    output_file_id: str | None
    error_file_id: str | None
    failed_at: float | None = None
    errors: JSON | None = None  # {"object": "list", "data": [{"code", "message", ...}]}


def _batch(r: Any) -> BatchRow:
    m = dict(r._mapping)
    m["metadata"] = orjson.loads(m["metadata"]) if m["metadata"] else None
    m["errors"] = orjson.loads(m["errors"]) if m.get("errors") else None
    return BatchRow(**m)


def insert_batch(c: Connection, *, tenant: str, key_id: str, agent: str | None,
                 input_file: FileRow, completion_window: str, metadata: JSON | None,
                 body_lines: Iterable[tuple[int, str, str]], expires_in_s: float) -> BatchRow:
    """The batch and all its lines, ``in_progress``, in the caller's transaction."""
    now = time.time()
    batch_id = new_id("batch")
    c.execute(batches.insert().values(
        id=batch_id, tenant=tenant, key_id=key_id, agent=agent,
        endpoint=input_file.endpoint or "", input_file_id=input_file.id,
        completion_window=completion_window, status=IN_PROGRESS,
        metadata=_json(metadata) if metadata else None, total=input_file.lines,
        created_at=now, in_progress_at=now, expires_at=now + expires_in_s))
    rows = [{"batch_id": batch_id, "line_no": no, "custom_id": cid, "body": body,
             "status": QUEUED, "attempts": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "cost_usd": 0.0, "cpu_s": 0.0, "wall_s": 0.0}
            for no, cid, body in body_lines]
    for i in range(0, len(rows), 1000):
        c.execute(lines.insert(), rows[i:i + 1000])
    got = get_batch(c, batch_id, None)
    assert got is not None
    return got


def get_batch(c: Connection, batch_id: str, tenant: str | None) -> BatchRow | None:
    q = select(batches).where(batches.c.id == batch_id)
    if tenant is not None:
        q = q.where(batches.c.tenant == tenant)
    r = c.execute(q).first()
    return None if r is None else _batch(r)


def list_batches(c: Connection, tenant: str | None, *, after: str | None, limit: int
                 ) -> list[BatchRow]:
    q = select(batches)
    if tenant is not None:
        q = q.where(batches.c.tenant == tenant)
    if after:
        pivot = get_batch(c, after, tenant)
        if pivot is None:  # the service refuses an unknown cursor before it gets here
            return []
        q = q.where(batches.c.created_at < pivot.created_at)
    q = q.order_by(batches.c.created_at.desc()).limit(limit)
    return [_batch(r) for r in c.execute(q)]


def active_batches(c: Connection) -> list[str]:
    return list(c.execute(select(batches.c.id).where(batches.c.status.in_(ACTIVE))).scalars())


def counts(c: Connection, batch_id: str) -> dict[str, int]:
    q = (select(lines.c.status, func.count()).where(lines.c.batch_id == batch_id)
         .group_by(lines.c.status))
    return {str(s): int(n) for s, n in c.execute(q)}


def open_lines(c: Connection) -> int:
    """Lines queued or running in every active batch (what the scaler sizes workers by)."""
    q = (select(func.count()).select_from(lines.join(batches, batches.c.id == lines.c.batch_id))
         .where(and_(batches.c.status.in_(ACTIVE), lines.c.status.in_(OPEN))))
    return int(c.execute(q).scalar_one())


def queued_models(c: Connection, limit: int = 8) -> list[tuple[str, JSON | None]]:
    """``(model, response_format)`` for the next open line of every active batch (at most
    ``limit``, in batch order; ``response_format`` when it asks for ``json_schema`` output,
    else None): what a worker that starts now will be asked to run first."""
    q = (select(batches.c.id).where(batches.c.status.in_(ACTIVE))
         .order_by(batches.c.created_at).limit(limit))
    out: list[tuple[str, JSON | None]] = []
    for batch_id in c.execute(q).scalars():
        body = c.execute(select(lines.c.body).where(and_(
            lines.c.batch_id == batch_id, lines.c.status.in_(OPEN)))
            .order_by(lines.c.line_no).limit(1)).scalar()
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
            continue
        fmt = doc.get("response_format")
        item = (doc["model"],
                fmt if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None)
        if item not in out:
            out.append(item)
    return out


def queued_line_numbers(c: Connection, batch_id: str,
                        states: tuple[str, ...] = OPEN) -> list[int]:
    q = select(lines.c.line_no).where(and_(lines.c.batch_id == batch_id,
                                           lines.c.status.in_(states)))
    return [int(n) for n in c.execute(q).scalars()]


def request_cancel(c: Connection, batch_id: str) -> None:
    """in_progress -> cancelling; every line not started yet is cancelled now."""
    now = time.time()
    c.execute(update(batches).where(and_(batches.c.id == batch_id,
                                         batches.c.status == IN_PROGRESS))
              .values(status=CANCELLING, cancelling_at=now))
    c.execute(update(lines).where(and_(lines.c.batch_id == batch_id, lines.c.status == QUEUED))
              .values(status=CANCELLED, finished_at=now))


def stop_batch(c: Connection, batch_id: str, *, status_code: int, error: JSON) -> bool:
    """End a batch that must not go on (its key was revoked): every queued line goes to the
    error file with ``error``; lines already running finish; then the batch is ``failed``
    with ``error`` in its ``errors``. Until those lines finish it is ``cancelling`` (the
    OpenAI status for a batch that is stopping). False: it was not in progress."""
    now = time.time()
    errors = {"object": "list", "data": [{**error, "param": None, "line": None}]}
    res = c.execute(update(batches).where(and_(batches.c.id == batch_id,
                                               batches.c.status == IN_PROGRESS))
                    .values(status=CANCELLING, cancelling_at=now, errors=_json(errors)))
    if not res.rowcount:
        return False
    body = {"error": {"type": error.get("type") or "api_error", "code": error.get("code"),
                      "message": error.get("message"), "param": None}}
    c.execute(update(lines).where(and_(lines.c.batch_id == batch_id, lines.c.status == QUEUED))
              .values(status=FAILED, status_code=status_code, response=_json(body),
                      error=_json({"code": error.get("code"), "message": error.get("message")}),
                      finished_at=now))
    return True


def finalize_if_done(c: Connection, batch_id: str) -> bool:
    """Close the batch when no line is open: completed (cancelled, or failed when it was
    stopped with errors), with its files."""
    b = get_batch(c, batch_id, None)
    if b is None or b.status not in ACTIVE:
        return False
    n = counts(c, batch_id)
    if any(n.get(s, 0) for s in OPEN):
        return False
    now = time.time()
    values: JSON
    if b.status == CANCELLING and b.errors:
        values = {"status": BATCH_FAILED, "failed_at": now}
    elif b.status == CANCELLING:
        values = {"status": BATCH_CANCELLED, "cancelled_at": now}
    else:
        values = {"status": COMPLETED, "finalizing_at": now, "completed_at": now}
    for kind, status in (("output", DONE), ("error", FAILED)):
        present = n.get(status, 0)
        if present:
            # no line changes once none is open, so the size is the content's for good
            size = rendered_size(c, batch_id, status)
            fid = new_id("file")
            c.execute(files.insert().values(
                id=fid, tenant=b.tenant, purpose="batch_output",
                filename=f"{batch_id}_{kind}.jsonl", bytes=size, created_at=now,
                lines=present, endpoint=b.endpoint, batch_id=batch_id, kind=kind,
                content=None))
            values[f"{kind}_file_id"] = fid
    res = c.execute(update(batches).where(and_(batches.c.id == batch_id,
                                               batches.c.status == b.status)).values(**values))
    return bool(res.rowcount)


# -- lines ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineClaim:
    """What a worker needs to run one line (None fields: nothing to run)."""

    batch: BatchRow
    custom_id: str
    body: JSON
    attempts: int


def claim_line(c: Connection, batch_id: str, line_no: int) -> LineClaim | None:
    """Count an attempt on an open line of an active batch; None: nothing to do."""
    b = get_batch(c, batch_id, None)
    r = c.execute(select(lines.c.status, lines.c.attempts, lines.c.custom_id, lines.c.body)
                  .where(and_(lines.c.batch_id == batch_id, lines.c.line_no == line_no))
                  ).first()
    if b is None or r is None or r[0] not in OPEN:
        return None
    if b.status != IN_PROGRESS:
        c.execute(update(lines).where(and_(lines.c.batch_id == batch_id,
                                           lines.c.line_no == line_no,
                                           lines.c.status.in_(OPEN)))
                  .values(status=CANCELLED, finished_at=time.time()))
        return None
    attempts = int(r[1]) + 1
    c.execute(update(lines).where(and_(lines.c.batch_id == batch_id,
                                       lines.c.line_no == line_no))
              .values(status=RUNNING, attempts=attempts, started_at=time.time()))
    return LineClaim(batch=b, custom_id=r[2], body=orjson.loads(r[3]), attempts=attempts)


def count_attempt(c: Connection, batch_id: str, line_no: int) -> int:
    c.execute(update(lines).where(and_(lines.c.batch_id == batch_id,
                                       lines.c.line_no == line_no))
              .values(attempts=lines.c.attempts + 1))
    return int(c.execute(select(lines.c.attempts).where(and_(
        lines.c.batch_id == batch_id, lines.c.line_no == line_no))).scalar_one())


def finish_line(c: Connection, batch_id: str, line_no: int, *, status: str, status_code: int,
                response: JSON | None, error: JSON | None, request_id: str | None,
                prompt_tokens: int = 0, completion_tokens: int = 0, cost_usd: float = 0.0,
                cpu_s: float = 0.0, wall_s: float = 0.0, schema_ok: bool | None = None,
                model: str | None = None, on_local: bool | None = None) -> bool:
    """Write the line's result once: only an open line takes it."""
    res = c.execute(update(lines).where(and_(lines.c.batch_id == batch_id,
                                             lines.c.line_no == line_no,
                                             lines.c.status.in_(OPEN)))
                    .values(status=status, status_code=status_code,
                            response=None if response is None else _json(response),
                            error=None if error is None else _json(error),
                            request_id=request_id, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, cost_usd=cost_usd,
                            cpu_s=cpu_s, wall_s=wall_s, finished_at=time.time(),
                            schema_ok=None if schema_ok is None else int(schema_ok),
                            model=model,
                            on_local=None if on_local is None else int(on_local)))
    return bool(res.rowcount)


def result_lines(c: Connection, batch_id: str, status: str, *, after: int = 0,
                 limit: int = 1000) -> list[JSON]:
    """Output (done) or error (failed) file lines in input order, OpenAI's shape."""
    q = (select(lines.c.line_no, lines.c.custom_id, lines.c.status_code, lines.c.response,
                lines.c.error, lines.c.request_id)
         .where(and_(lines.c.batch_id == batch_id, lines.c.status == status,
                     lines.c.line_no > after))
         .order_by(lines.c.line_no).limit(limit))
    out = []
    for no, cid, code, resp, err, rid in c.execute(q):
        out.append({
            "id": f"batch_req_{batch_id.removeprefix('batch_')}_{no}", "custom_id": cid,
            "response": None if code is None else {
                "status_code": code, "request_id": rid or "",
                "body": orjson.loads(resp) if resp else None},
            "error": orjson.loads(err) if err else None,
            "_line": no,
        })
    return out


def render_chunk(c: Connection, batch_id: str, status: str, after: int = 0,
                 limit: int = 500) -> tuple[bytes, int | None]:
    """Up to ``limit`` lines of the output (done) or error (failed) file after line number
    ``after``, as the file's bytes, and the line number to go on from (None: the end)."""
    part = result_lines(c, batch_id, status, after=after, limit=limit)
    if not part:
        return b"", None
    last = int(part[-1]["_line"])
    for line in part:
        line.pop("_line")
    return b"".join(orjson.dumps(line) + b"\n" for line in part), last


def rendered_size(c: Connection, batch_id: str, status: str) -> int:
    """The size in bytes of the output (done) or error (failed) file."""
    size, after = 0, 0
    while True:
        part, nxt = render_chunk(c, batch_id, status, after, limit=2000)
        size += len(part)
        if nxt is None:
            return size
        after = nxt


@dataclass(frozen=True)
class Totals:
    lines_done: int
    lines_failed: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cpu_s: float
    first_start: float | None
    last_finish: float | None
    schema_checked: int
    schema_failures: int

    @property
    def wall_s(self) -> float:
        if self.first_start is None or self.last_finish is None:
            return 0.0
        return max(0.0, self.last_finish - self.first_start)


def totals(c: Connection, batch_id: str, *, on_local: bool | None = None) -> Totals:
    """Every line of the batch (``on_local`` None), or only the lines that ran on the local
    provider (True) or on an upstream (False). Failed lines count too: a line whose model
    call ran and then failed (``output_truncated``) was billed and used the CPU."""
    w = lines.c.batch_id == batch_id
    if on_local is not None:
        w = and_(w, lines.c.on_local == int(on_local))
    r = c.execute(select(
        func.sum((lines.c.status == DONE).cast(Integer)),
        func.sum((lines.c.status == FAILED).cast(Integer)),
        func.coalesce(func.sum(lines.c.prompt_tokens), 0),
        func.coalesce(func.sum(lines.c.completion_tokens), 0),
        func.coalesce(func.sum(lines.c.cost_usd), 0.0),
        func.coalesce(func.sum(lines.c.cpu_s), 0.0),
        func.min(lines.c.started_at), func.max(lines.c.finished_at),
        func.count(lines.c.schema_ok),
        func.coalesce(func.sum(1 - lines.c.schema_ok), 0),
    ).where(w)).one()
    return Totals(int(r[0] or 0), int(r[1] or 0), int(r[2]), int(r[3]), float(r[4]),
                  float(r[5]), r[6], r[7], int(r[8]), int(r[9]))


def line_stats(c: Connection, batch_id: str) -> list[tuple[int, int, float]]:
    """(prompt_tokens, completion_tokens, cpu_s) of each local line whose model call ran,
    done or failed (cost fitting)."""
    q = (select(lines.c.prompt_tokens, lines.c.completion_tokens, lines.c.cpu_s)
         .where(and_(lines.c.batch_id == batch_id, lines.c.on_local == 1,
                     lines.c.prompt_tokens + lines.c.completion_tokens > 0)))
    return [(int(a), int(b), float(s)) for a, b, s in c.execute(q)]


def upstream_models(c: Connection, batch_id: str) -> list[tuple[str, int, int, int, float]]:
    """(model, lines, prompt_tokens, completion_tokens, metered USD) per upstream model."""
    q = (select(lines.c.model, func.count(), func.coalesce(func.sum(lines.c.prompt_tokens), 0),
                func.coalesce(func.sum(lines.c.completion_tokens), 0),
                func.coalesce(func.sum(lines.c.cost_usd), 0.0))
         .where(and_(lines.c.batch_id == batch_id, lines.c.on_local == 0))
         .group_by(lines.c.model).order_by(lines.c.model))
    return [(str(m or ""), int(n), int(p), int(o), float(u)) for m, n, p, o, u in c.execute(q)]
