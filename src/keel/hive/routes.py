"""HTTP surface of the hive, tenant-scoped (the key's tenant), under ``/v1/hive``.

- ``POST /v1/hive/tasks`` ``{"name"?, "ttl_s"?}`` (201 created, 200 joined an existing
  task); ``GET /v1/hive/tasks[/{task}]``; ``DELETE /v1/hive/tasks/{task}`` (a tenant key
  without an agent, or an admin key: an agent key gets 403)
- ``POST /v1/hive/tasks/{task}/streams/{stream}``: JSON ``{"kind", "data"}`` or
  ``{"records": [...]}`` appends records; any other body (``text/plain``...) is streamed:
  each piece is appended as a ``tokens`` record as it arrives (``?end=true`` closes the
  stream afterwards). An agent key writes only the stream named after its agent.
- ``GET .../streams/{stream}`` the text; ``.../records?offset=&limit=`` records as JSON;
  ``.../tail?offset=&wait=`` Server-Sent Events (``id`` = seq; ``Last-Event-ID``
  resumes; ``wait=true`` waits for a stream whose writer has not started yet)
- ``POST /v1/hive/expand`` ``{"text"}``: ``hive://task/stream@offset`` references expanded
- ``GET /v1/hive/report`` size and age; ``POST /v1/hive/gc`` ``{"dry_run"}`` (admin)
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from keel.errors import InvalidRequest, KeelError, WrongType
from keel.gateway.context import Principal
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.params import int_param
from keel.gateway.routes import authenticate
from keel.gateway.validation import parse_json
from keel.hive.model import check_name

if TYPE_CHECKING:
    from keel.gateway.services import Services
    from keel.hive.service import HiveService

MAX_JSON = 8 << 20
MAX_OFFSET = 10**12


class HiveRoutes:
    def __init__(self, svc: Services, hive: HiveService) -> None:
        self.svc = svc
        self.hive = hive

    def router(self) -> APIRouter:
        r = APIRouter()
        base = "/v1/hive/tasks"
        s = base + "/{task}/streams/{stream}"
        for path, fn, method, summary in (
            (base, self.create, "POST", "Create a hive task"),
            (base, self.list, "GET", "List the tenant's hive tasks"),
            (base + "/{task}", self.get, "GET", "A hive task and its streams"),
            (base + "/{task}", self.delete, "DELETE", "Delete a hive task"),
            (s, self.append, "POST", "Append records (JSON) or stream a body into a stream"),
            (s, self.text, "GET", "A stream's text"),
            (s + "/records", self.records, "GET", "A stream's records"),
            (s + "/tail", self.tail, "GET", "Tail a stream live (Server-Sent Events)"),
            ("/v1/hive/expand", self.expand, "POST", "Expand hive:// references"),
            ("/v1/hive/report", self.report, "GET", "Hive size and age"),
            ("/v1/hive/gc", self.gc, "POST", "Delete expired hive tasks (admin)"),
        ):
            r.add_api_route(path, fn, methods=[method], summary=summary)
        return r

    async def _who(self, request: Request) -> Principal:
        return await authenticate(self.svc, request)

    async def create(self, request: Request) -> Response:
        p = await self._who(request)
        raw = await read_body(request, 65536, None)
        body = parse_json(raw) if raw.strip() else {}
        unknown = sorted(set(body) - {"name", "ttl_s"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; send "
                                 '{"name": "my-task", "ttl_s": 86400}', param=unknown[0])
        name, ttl = body.get("name"), body.get("ttl_s")
        if name is not None and not isinstance(name, str):
            raise WrongType("field 'name' must be a string", param="name")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise WrongType("field 'ttl_s' must be a number of seconds", param="ttl_s")
        info, created = await self.hive.open_task(p, name,
                                                  None if ttl is None else float(ttl))
        return ORJSONResponse(info.to_dict(), status_code=201 if created else 200)

    async def list(self, request: Request) -> Response:
        p = await self._who(request)
        tasks = await self.hive.live_tasks(p.tenant)
        return ORJSONResponse({"object": "list", "data": [t.to_dict() for t in tasks]})

    async def get(self, request: Request, task: str) -> Response:
        p = await self._who(request)
        return ORJSONResponse((await self.hive.task(p.tenant, task)).to_dict())

    async def delete(self, request: Request, task: str) -> Response:
        p = await self._who(request)
        freed = await self.hive.delete_task(p.tenant, task, p)
        return ORJSONResponse({"task": task, "deleted": True, "bytes": freed})

    async def append(self, request: Request, task: str, stream: str) -> Response:
        p = await self._who(request)
        check_name(task, "task")
        check_name(stream, "stream")
        self.hive.check_writer(p, stream)
        await self.hive.task(p.tenant, task)
        end = request.query_params.get("end") in ("1", "true")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            body = parse_json(await read_body(request, MAX_JSON, None))
            items = body.get("records", [body]) if isinstance(body, dict) else None
            if not isinstance(items, list) or not items or not all(
                    isinstance(i, dict) and isinstance(i.get("data", ""), str)
                    and isinstance(i.get("kind", "note"), str) for i in items):
                raise InvalidRequest('send {"kind": "note", "data": "text"} or {"records": '
                                     '[{"kind": ..., "data": ...}, ...]}', param="records")
            pairs = [(i.get("kind", "note"), i.get("data", "")) for i in items]
            if end:
                pairs.append(("end", ""))
            seqs = await self.hive.append(p, task, stream, self.hive.records(p, stream, pairs),
                                          checked=True)
            return ORJSONResponse({"task": task, "stream": stream, "seqs": seqs,
                                   "ref": f"hive://{task}/{stream}@{seqs[0]}"})
        return await self._append_stream(request, p, task, stream, end)

    async def _append_stream(self, request: Request, p: Principal, task: str, stream: str,
                             end: bool) -> Response:
        """Each piece of the body becomes a record the moment it arrives."""
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        limit = self.hive.settings.max_record_bytes // 4  # characters: at most 4 bytes each
        seqs: list[int] = []
        try:
            async for chunk in request.stream():
                text = decoder.decode(chunk)
                for i in range(0, len(text), limit):
                    piece = text[i:i + limit]
                    seqs += await self.hive.append(
                        p, task, stream, self.hive.records(p, stream, [("tokens", piece)]),
                        checked=True)
            tail = decoder.decode(b"", final=True)
            items = ([("tokens", tail)] if tail else []) + ([("end", "")] if end else [])
            if items:
                seqs += await self.hive.append(p, task, stream,
                                               self.hive.records(p, stream, items),
                                               checked=True)
        except UnicodeDecodeError:
            raise InvalidRequest(f"the body is not UTF-8 text; {len(seqs)} whole records were "
                                 "written before the bad bytes", param="body") from None
        except KeelError as exc:
            if seqs:
                exc.message += f" ({len(seqs)} whole records were written before this)"
            raise
        first = seqs[0] if seqs else 0
        return ORJSONResponse({"task": task, "stream": stream, "records": len(seqs),
                               "ref": f"hive://{task}/{stream}@{first}"})

    async def text(self, request: Request, task: str, stream: str) -> Response:
        p = await self._who(request)
        start = int_param(request.query_params, "offset", 0, 0, MAX_OFFSET)
        return Response(await self.hive.text(p.tenant, task, stream, start),
                        media_type="text/plain; charset=utf-8")

    async def records(self, request: Request, task: str, stream: str) -> Response:
        p = await self._who(request)
        q = request.query_params
        recs = await self.hive.read(p.tenant, task, stream,
                                    int_param(q, "offset", 0, 0, MAX_OFFSET),
                                    int_param(q, "limit", 1000, 1, 10_000))
        return ORJSONResponse({"object": "list", "data": [r.to_dict() for r in recs]})

    async def tail(self, request: Request, task: str, stream: str) -> Response:
        p = await self._who(request)
        start = int_param(request.query_params, "offset", 0, 0, MAX_OFFSET)
        last = request.headers.get("last-event-id")
        if last is not None:
            start = int_param({"Last-Event-ID": last}, "Last-Event-ID", 0, -1, MAX_OFFSET) + 1
        wait = request.query_params.get("wait") in ("1", "true")
        if wait:  # answer at once; the records follow when the writer starts
            await self.hive.task(p.tenant, task)
            check_name(stream, "stream")
            records = None
        else:
            records = await self.hive.tail(p.tenant, task, stream, start)

        async def events() -> AsyncIterator[bytes]:
            recs = records
            try:
                if recs is None:
                    yield b": waiting for the stream's writer\n\n"
                    recs = await self.hive.tail(p.tenant, task, stream, start, wait=True)
                async for rec in recs:
                    yield (f"id: {rec.seq}\nevent: {rec.kind}\ndata: ".encode()
                           + orjson.dumps(rec.to_dict()) + b"\n\n")
            except KeelError as exc:
                yield b"event: error\ndata: " + orjson.dumps(exc.to_dict()) + b"\n\n"
            finally:
                if recs is not None:
                    await recs.aclose()  # type: ignore[attr-defined]

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})

    async def expand(self, request: Request) -> Response:
        p = await self._who(request)
        body = parse_json(await read_body(request, MAX_JSON, None))
        text = body.get("text")
        if not isinstance(text, str):
            raise WrongType("field 'text' must be a string holding hive:// references",
                            param="text")
        return ORJSONResponse({"text": await self.hive.expand(p.tenant, text)})

    async def report(self, request: Request) -> Response:
        p = await self._who(request)
        everyone = p.admin or not self.svc.settings.auth_required
        return ORJSONResponse(await self.hive.report(None if everyone else p.tenant))

    async def gc(self, request: Request) -> Response:
        p = await self._who(request)
        require_admin(p.admin or not self.svc.settings.auth_required)
        raw = await read_body(request, 4096, None)
        body = parse_json(raw) if raw.strip() else {}
        dry = body.get("dry_run", True)
        if not isinstance(dry, bool):
            raise WrongType("field 'dry_run' must be true or false", param="dry_run")
        return ORJSONResponse((await self.hive.gc(dry_run=dry)).to_dict())
