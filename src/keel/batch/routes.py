"""HTTP surface of batches, OpenAI's Files and Batch APIs (the official ``openai`` client
works unchanged): ``POST/GET /v1/files``, ``GET/DELETE /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``POST/GET /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel``; plus ``GET /v1/batches/{id}/cost`` (keel's cost
comparison)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from keel.batch.service import BatchService
from keel.errors import InvalidRequest, MissingField, PayloadTooLarge, UnsupportedMediaType
from keel.gateway.http import ORJSONResponse, read_body
from keel.gateway.routes import authenticate
from keel.gateway.validation import parse_json

if TYPE_CHECKING:
    from keel.gateway.services import Services

MULTIPART_OVERHEAD = 64 * 1024


def _limit(request: Request, default: int = 20) -> int:
    raw = request.query_params.get("limit", str(default))
    try:
        n = int(raw)
    except ValueError:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit") from None
    if not 1 <= n <= 100:
        raise InvalidRequest("limit must be an integer from 1 to 100", param="limit")
    return n


class BatchRoutes:
    def __init__(self, svc: Services, batches: BatchService) -> None:
        self.svc = svc
        self.b = batches

    def router(self) -> APIRouter:
        r = APIRouter()
        add = r.add_api_route
        add("/v1/files", self.upload, methods=["POST"],
            summary="Upload a batch input file (multipart: file, purpose=batch)")
        add("/v1/files", self.list_files, methods=["GET"], summary="List files")
        add("/v1/files/{file_id}", self.get_file, methods=["GET"], summary="Retrieve a file")
        add("/v1/files/{file_id}", self.delete_file, methods=["DELETE"],
            summary="Delete a file")
        add("/v1/files/{file_id}/content", self.content, methods=["GET"],
            summary="A file's content (batch output and error files: JSONL)")
        add("/v1/batches", self.create, methods=["POST"], summary="Create a batch")
        add("/v1/batches", self.list_batches, methods=["GET"], summary="List batches")
        add("/v1/batches/{batch_id}", self.get, methods=["GET"], summary="Retrieve a batch")
        add("/v1/batches/{batch_id}/cancel", self.cancel, methods=["POST"],
            summary="Cancel a batch")
        add("/v1/batches/{batch_id}/cost", self.cost, methods=["GET"],
            summary="What the batch cost locally vs each priced model (keel)")
        return r

    async def upload(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UnsupportedMediaType("upload the file as multipart/form-data with the "
                                       "fields `file` and `purpose`")
        limit = self.b.settings.max_file_bytes
        try:
            raw = await read_body(request, limit + MULTIPART_OVERHEAD, "batch.max_file_bytes")
        except PayloadTooLarge:  # the form's own bytes are allowed on top: name the setting
            size = request.headers.get("content-length")
            got = f"the upload is {size} bytes; " if size and size.isdigit() else ""
            raise PayloadTooLarge(
                f"{got}the file limit is {limit} bytes (set by batch.max_file_bytes): "
                "split the file into several batches") from None
        request._body = raw  # the form parser reads the body already taken
        async with request.form(max_files=1, max_fields=8) as form:
            purpose = form.get("purpose")
            upload = form.get("file")
            if not isinstance(purpose, str):
                raise MissingField("the `purpose` field is required (\"batch\")",
                                   param="purpose")
            if not isinstance(upload, UploadFile):
                raise MissingField("the `file` field is required: the JSONL file",
                                   param="file")
            content = await upload.read()
            name = upload.filename or "batch.jsonl"
        return ORJSONResponse(await self.b.upload(p, name, purpose, content))

    async def list_files(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        data = await self.b.files(p, request.query_params.get("purpose"),
                                  _limit(request, 100))
        return ORJSONResponse({"object": "list", "data": data, "has_more": False,
                               "first_id": data[0]["id"] if data else None,
                               "last_id": data[-1]["id"] if data else None})

    async def get_file(self, request: Request, file_id: str) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse((await self.b.file(p, file_id)).public())

    async def delete_file(self, request: Request, file_id: str) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse(await self.b.delete_file(p, file_id))

    async def content(self, request: Request, file_id: str) -> Response:
        p = await authenticate(self.svc, request)
        await self.b.file(p, file_id)  # 404 before the stream starts
        return StreamingResponse(self.b.content(p, file_id),
                                 media_type="application/jsonl")

    async def create(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        body = parse_json(await read_body(request, 64 * 1024, None))
        return ORJSONResponse(await self.b.create(p, body))

    async def list_batches(self, request: Request) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse(await self.b.list(p, request.query_params.get("after"),
                                                _limit(request)))

    async def get(self, request: Request, batch_id: str) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse(await self.b.get(p, batch_id))

    async def cancel(self, request: Request, batch_id: str) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse(await self.b.cancel(p, batch_id))

    async def cost(self, request: Request, batch_id: str) -> Response:
        p = await authenticate(self.svc, request)
        return ORJSONResponse(await self.b.cost(p, batch_id))
