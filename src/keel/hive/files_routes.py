"""HTTP surface of a task's shared files, under ``/v1/hive/tasks/{task}/files``.

- ``GET .../files``: the files with version, size, writer; ``GET .../files/{name}``: the
  bytes, ``ETag: "<version>"`` (``If-None-Match`` with it: 304);
- ``PUT .../files/{name}``: the body is the whole file. ``If-Match: "<version>"`` updates
  that version, ``If-None-Match: *`` creates; 412 (with ``current_version``) when the file
  moved on or exists, 428 when neither header is sent;
- ``DELETE .../files/{name}`` with ``If-Match``.

Any key of the task's tenant reads and writes (files are shared by the task's agents).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest, PayloadTooLarge
from keel.gateway.http import ORJSONResponse, read_body
from keel.gateway.routes import authenticate
from keel.hive.model import FileInfo, HivePreconditionRequired

if TYPE_CHECKING:
    from keel.gateway.services import Services
    from keel.hive.service import HiveService

HOW = ('send If-Match: "<version>" (the ETag of your last GET) to update, or '
       "If-None-Match: * to create")


def _version(header: str) -> int:
    """``"3"`` (or a bare ``3``) -> 3. A weak tag (``W/"3"``) is refused: If-Match compares
    strongly (RFC 9110 13.1.1), and keel only hands out strong ones."""
    raw = header.strip()
    if raw.startswith("W/"):
        raise InvalidRequest(f"If-Match {header[:40]!r} is a weak entity tag, which never "
                             f"matches for a write; {HOW}", param="If-Match")
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        raw = raw[1:-1]
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidRequest(f"If-Match {header[:40]!r} is not one version; {HOW}",
                             param="If-Match")
    return int(raw)


def _expect(request: Request, *, create: bool) -> int:
    match = request.headers.get("if-match")
    none = request.headers.get("if-none-match")
    if match is not None and none is not None:
        raise InvalidRequest("send If-Match or If-None-Match, not both", param="If-Match")
    if none is not None:
        if not create or none.strip() != "*":
            raise InvalidRequest(f"If-None-Match here must be *; {HOW}",
                                 param="If-None-Match")
        return 0
    if match is None:
        raise HivePreconditionRequired(
            "this write needs a precondition so it cannot overwrite someone else's: "
            + (HOW if create else 'send If-Match: "<version>"'))
    return _version(match)


def _written(task: str, info: FileInfo, status: int) -> Response:
    return ORJSONResponse({"task": task, "name": info.name, "version": info.version,
                           "size": info.size, "writer": info.writer,
                           "ref": f"hive://{task}/files/{info.name}@{info.version}"},
                          status_code=status, headers={"etag": info.etag()})


class HiveFileRoutes:
    def __init__(self, svc: Services, hive: HiveService) -> None:
        self.svc = svc
        self.files = hive.files
        self.limit = hive.settings.max_file_bytes

    def router(self) -> APIRouter:
        r = APIRouter()
        base = "/v1/hive/tasks/{task}/files"
        for path, fn, method, summary in (
            (base, self.list, "GET", "A hive task's shared files"),
            (base + "/{name}", self.get, "GET", "A shared file's bytes (ETag: its version)"),
            (base + "/{name}", self.put, "PUT",
             "Write a shared file (If-Match: version, or If-None-Match: * to create)"),
            (base + "/{name}", self.delete, "DELETE", "Delete a shared file (If-Match)"),
        ):
            r.add_api_route(path, fn, methods=[method], summary=summary)
        return r

    async def list(self, request: Request, task: str) -> Response:
        p = await authenticate(self.svc, request)
        files = await self.files.list(p.tenant, task)
        return ORJSONResponse({"object": "list", "data": [
            {"name": f.name, "version": f.version, "size": f.size, "ts": f.ts,
             "writer": f.writer, "ref": f"hive://{task}/files/{f.name}@{f.version}"}
            for f in files]})

    async def get(self, request: Request, task: str, name: str) -> Response:
        p = await authenticate(self.svc, request)
        f = await self.files.get(p.tenant, task, name)
        headers = {"etag": f.info.etag(), "x-keel-hive-writer": f.info.writer}
        if request.headers.get("if-none-match", "").strip() == f.info.etag():
            return Response(status_code=304, headers=headers)
        return Response(f.data, media_type="application/octet-stream", headers=headers)

    async def put(self, request: Request, task: str, name: str) -> Response:
        p = await authenticate(self.svc, request)
        expect = _expect(request, create=True)
        try:
            data = await read_body(request, self.limit, "hive.max_file_bytes")
        except PayloadTooLarge:
            raise PayloadTooLarge(f"a hive file is at most {self.limit} bytes ([hive] "
                                  "max_file_bytes); nothing was written") from None
        info = await self.files.put(p, task, name, data, expect=expect)
        return _written(task, info, 201 if expect == 0 else 200)

    async def delete(self, request: Request, task: str, name: str) -> Response:
        p = await authenticate(self.svc, request)
        info = await self.files.delete(p, task, name, expect=_expect(request, create=False))
        return ORJSONResponse({"task": task, "name": name, "deleted": True,
                               "version": info.version})
