"""HTTP helpers shared by the gateway routes: bodies, identities, JSON and errors."""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import AuthenticationError, KeelError, PayloadTooLarge, PermissionDenied

log = logging.getLogger("keel.gateway")


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def request_id_headers(request_id: str) -> dict[str, str]:
    """keel's request id under its own name and the one OpenAI's SDKs read
    (``x-request-id``: ``response.request_id``, ``APIError.request_id``)."""
    return {"x-keel-request-id": request_id, "x-request-id": request_id}


def error_response(exc: KeelError, *, request_id: str | None = None) -> Response:
    # every answer carries a request id, errors outside the model pipeline too (an id
    # made here is not in the request log, but it is in the access log line)
    headers = request_id_headers(request_id or "req_" + secrets.token_hex(10))
    if exc.http_status == 401:  # RFC 9110: a 401 names the scheme the client should use
        headers["www-authenticate"] = 'Bearer realm="keel"'
    if exc.retry_after is not None:  # RFC 9110: whole seconds; never "0" for a real wait
        headers["retry-after"] = str(max(0, math.ceil(exc.retry_after)))
    return ORJSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


async def read_body(request: Request, limit: int,
                    setting: str | None = "server.max_body_bytes") -> bytes:
    """The request body, refusing anything over ``limit`` bytes without buffering it.
    ``setting`` names what sets the limit, so the 413 says what to change (``None``: a
    fixed limit of the endpoint)."""
    source = f"set by {setting}" if setting else "this endpoint's fixed limit"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            size = -1
        if size > limit:
            raise PayloadTooLarge(
                f"request body is {size} bytes; the limit is {limit} bytes ({source})"
            )
        if size >= 0:
            return await request.body()
    parts: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"request body exceeds the limit of {limit} bytes ({source})"
            )
        parts.append(chunk)
    return b"".join(parts)


def bearer_token(request: Request) -> str:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthenticationError(
            "Authorization header must be 'Bearer <api key>'"
        )
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    raise AuthenticationError(
        "missing API key: send 'Authorization: Bearer <key>' "
        "(create one with `keel keys create --tenant NAME`)"
    )


def forwarded_ip(request: Request, trusted_proxies: frozenset[str] = frozenset()) -> str | None:
    """The client address a trusted proxy reported in X-Forwarded-For (None otherwise)."""
    peer = request.client.host if request.client else "unknown"
    if peer in trusted_proxies:
        fwd = request.headers.get("x-forwarded-for")
        if fwd:
            return fwd.split(",")[0].strip() or None
    return None


def client_ip(request: Request, trusted_proxies: frozenset[str] = frozenset()) -> str:
    fwd = forwarded_ip(request, trusted_proxies)
    if fwd is not None:
        return fwd
    return request.client.host if request.client else "unknown"


def require_admin(admin: bool) -> None:
    if not admin:
        raise PermissionDenied("this endpoint needs an admin API key (`keel keys create "
                               "--tenant T --admin`)")
