"""Any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, OpenAI) over aiohttp.

One pooled ``aiohttp.ClientSession`` per provider (created lazily inside the running
loop). Connection failures, 429 and 5xx are retried with exponential backoff before any
byte has been streamed to the client; upstream 4xx are relayed as client errors. An
upstream Retry-After is honoured: a short one is waited out before the retry, a long one
ends the retries and is passed on to the client with the error.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from keel.config import ModelSpec, OpenAISettings
from keel.errors import (
    KeelError,
    RateLimited,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from keel.redaction import Redactor, safe_url

JSON = dict[str, Any]
_RETRY_STATUS = {429, 500, 502, 503, 504}
# The longest upstream Retry-After keel waits out itself; past that the client (which
# gets the Retry-After) decides, rather than keel holding the request open.
_MAX_RETRY_AFTER_S = 5.0


class OpenAICompatProvider:
    kind = "openai"

    def __init__(self, settings: OpenAISettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=s.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=s.connect_timeout_s, sock_read=s.timeout_s
                ),
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _redactor(self, spec: ModelSpec) -> Redactor:
        """Scrubs what keel sent upstream (its API key) out of upstream error text."""
        key = spec.api_key or self.settings.api_key
        return Redactor([key.get_secret_value() if key is not None else None])

    def _target(self, spec: ModelSpec, path: str) -> tuple[str, dict[str, str]]:
        base = (spec.base_url or self.settings.base_url).rstrip("/")
        key = spec.api_key or self.settings.api_key
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key.get_secret_value()}"
        return f"{base}{path}", headers

    async def _post(self, spec: ModelSpec, path: str, body: JSON) -> aiohttp.ClientResponse:
        url, headers = self._target(spec, path)
        payload = orjson.dumps({**body, "model": spec.upstream_model})
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = await self._client().post(url, data=payload, headers=headers)
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if last:
                    if isinstance(exc, asyncio.TimeoutError):
                        raise UpstreamTimeout(
                            f"model {spec.name!r}: upstream did not answer within "
                            f"{self.settings.timeout_s:g}s"
                        ) from None
                    raise UpstreamError(
                        f"model {spec.name!r}: cannot reach upstream {safe_url(url)}: "
                        f"{self._redactor(spec)(str(exc))}"
                    ) from None
            else:
                if resp.status < 400:
                    return resp
                wait = retry_after(resp.headers)
                too_long = wait is not None and wait > min(_MAX_RETRY_AFTER_S,
                                                           self.settings.timeout_s)
                if resp.status not in _RETRY_STATUS or last or too_long:
                    raise await _upstream_error(resp, spec, self._redactor(spec), wait)
                resp.release()
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random()))
        raise UpstreamError(f"model {spec.name!r}: upstream failed")  # pragma: no cover

    async def _json(self, spec: ModelSpec, path: str, body: JSON) -> JSON:
        resp = await self._post(spec, path, body)
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"model {spec.name!r}: upstream broke off: {exc}") from None
        finally:
            resp.release()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"model {spec.name!r}: upstream answered with invalid JSON"
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(f"model {spec.name!r}: upstream answered with a non-object")
        data["model"] = spec.name
        return data

    async def _sse(self, spec: ModelSpec, path: str, body: JSON) -> AsyncGenerator[JSON, None]:
        body = {**body, "stream": True}
        opts = dict(body.get("stream_options") or {})
        opts["include_usage"] = True
        body["stream_options"] = opts
        resp = await self._post(spec, path, body)
        try:
            buf = b""
            async for piece in resp.content.iter_any():
                buf += piece
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(
                            f"model {spec.name!r}: upstream sent an invalid stream event"
                        ) from None
                    if isinstance(chunk, dict):
                        if "error" in chunk:
                            raise UpstreamError(
                                f"model {spec.name!r}: upstream stream error: "
                                f"{self._redactor(spec)(_message(chunk))}"
                            )
                        chunk["model"] = spec.name
                        yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamError(f"model {spec.name!r}: upstream stream broke: {exc}") from None
        finally:
            resp.release()

    # -- ChatProvider -------------------------------------------------------------------

    async def chat(self, body: JSON, model: ModelSpec) -> JSON:
        return await self._json(model, "/chat/completions", body)

    def chat_stream(self, body: JSON, model: ModelSpec) -> AsyncGenerator[JSON, None]:
        return self._sse(model, "/chat/completions", body)

    async def complete(self, body: JSON, model: ModelSpec) -> JSON:
        return await self._json(model, "/completions", body)

    def complete_stream(self, body: JSON, model: ModelSpec) -> AsyncGenerator[JSON, None]:
        return self._sse(model, "/completions", body)

    async def embed(self, body: JSON, model: ModelSpec) -> JSON:
        return await self._json(model, "/embeddings", body)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _message(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    return str(data)[:500]


def retry_after(headers: Any) -> float | None:
    """Seconds an upstream asked to wait: OpenAI's ``retry-after-ms``, else Retry-After
    as seconds or an HTTP date (None when absent or unreadable)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return _seconds(float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _seconds(float(value))
    except ValueError:
        pass
    try:
        return _seconds(parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _seconds(value: float) -> float | None:
    """A wait clamped at zero; None for "inf"/"nan", which no sleep or header can carry."""
    return max(0.0, value) if math.isfinite(value) else None


async def _upstream_error(resp: aiohttp.ClientResponse, spec: ModelSpec,
                          redact: Redactor, wait: float | None = None) -> KeelError:
    """The client-facing error for an upstream 4xx/5xx. The upstream's message is
    untrusted text (it may echo the request, keel's API key included): it is redacted and
    cut to a short summary before any client sees it."""
    try:
        raw = await resp.read()
        detail = redact(_message(orjson.loads(raw)))
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
        detail = f"HTTP {resp.status}"
    finally:
        resp.release()
    where = f"model {spec.name!r} (upstream {spec.upstream_model!r})"
    if resp.status == 429:
        return RateLimited(f"{where} is rate limited upstream: {detail}", retry_after=wait)
    if resp.status in (401, 403):
        return UpstreamError(
            f"{where}: upstream refused keel's credentials (HTTP {resp.status}); "
            "check api_key for this model in keel.toml"
        )
    if 400 <= resp.status < 500:
        return UpstreamRejected(f"{where} rejected the request: {detail}")
    return UpstreamError(f"{where} failed with HTTP {resp.status}: {detail}")
