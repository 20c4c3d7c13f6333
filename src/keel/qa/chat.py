"""Chat backends for the swarm, the judge and the generator.

``HttpChat``: any OpenAI-compatible ``/v1/chat/completions`` (a staging app, another
keel, vLLM, a hosted API) over one pooled aiohttp session. ``KeelChat``: a model of this
keel through :class:`keel.gateway.internal.InternalClient`, so metering, budgets, the
request log and the firewall apply and the cost comes from keel's own meter.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import orjson

from keel.errors import InvalidRequest, KeelError, UpstreamError
from keel.redaction import safe_url

if TYPE_CHECKING:
    from keel.gateway.context import Principal
    from keel.gateway.internal import InternalClient


@dataclass
class ChatReply:
    text: str
    latency_ms: float
    cost_usd: float = 0.0
    context: str = ""  # what the target says it used (RAG passages), when it exposes it
    raw: dict[str, Any] = field(default_factory=dict)


class ChatBackend(Protocol):
    name: str

    async def chat(self, body: dict[str, Any]) -> ChatReply: ...

    async def aclose(self) -> None: ...


class TargetUnusable(KeelError):
    """The target or judge cannot be used at all (down, not OpenAI-shaped): bad input."""

    http_status = 400
    code = "qa_target_unusable"


# query parameter names that carry credentials (api_key, token, sig, X-Amz-Credential...)
_SECRET_PARAM = re.compile(r"key|token|secret|passw|auth|sig|credential|session",
                           re.IGNORECASE)


def completions_url(base: str) -> str:
    """The chat completions endpoint under ``base``; the path is extended before any
    query string (``https://h/v1?api-version=2`` -> ``https://h/v1/chat/completions?...``)."""
    base = base.strip()
    if not base.startswith(("http://", "https://")):
        raise InvalidRequest(f"{safe_url(base)!r}: the target must be an http(s) URL")
    try:
        parts = urlsplit(base)
    except ValueError as exc:
        raise InvalidRequest(f"{safe_url(base)!r}: not a valid URL ({exc})") from None
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_url(url: str, what: str, key_env: str) -> None:
    """Refuse a URL that carries credentials (user info, a secret-looking query
    parameter): URLs are stored with the run (and in a durable run's workflow inputs),
    keys must not be. The key belongs in ``$key_env``, which is only read at call time."""
    completions_url(url)  # the scheme and syntax, with their own messages
    parts = urlsplit(url.strip())
    hint = f"pass the key in ${key_env} instead (it is never stored)"
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"{what} {safe_url(url)} has credentials in it "
                             f"(user:password@host): {hint}")
    names = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)
                    if _SECRET_PARAM.search(k)})
    if names:
        raise InvalidRequest(f"{what} {safe_url(url)} has credentials in its query "
                             f"({', '.join(names)}): {hint}")


def _context_of(body: dict[str, Any]) -> str:
    ctx = body.get("context")
    if ctx is None:
        choices = body.get("choices") or [{}]
        ctx = (choices[0].get("message") or {}).get("context")
    if isinstance(ctx, list):
        return "\n\n".join(str(x) for x in ctx)
    return str(ctx) if ctx else ""


class HttpChat:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 connections: int = 256) -> None:
        self.url = completions_url(base_url)
        self.name = safe_url(self.url)  # for messages: no user info or query
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=self._timeout, json_serialize=lambda o: orjson.dumps(o).decode())
        return self._session

    async def chat(self, body: dict[str, Any]) -> ChatReply:
        t0 = time.perf_counter()
        try:
            async with self._sess().post(self.url, data=orjson.dumps(body),
                                         headers=self._headers) as resp:
                raw = await resp.read()
                status = resp.status
                cost = resp.headers.get("x-keel-cost-usd")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # ValueError: aiohttp refusing the URL or headers (a key both in the URL and
            # in Authorization): a failed call, not a crash
            raise UpstreamError(f"{self.name}: {type(exc).__name__}: "
                                f"{exc}"[:300]) from None
        latency = (time.perf_counter() - t0) * 1000
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{self.name} answered HTTP {status} with non-JSON "
                                f"({raw[:80]!r})") from None
        if status != 200 or not isinstance(doc, dict):
            msg = doc.get("error", {}) if isinstance(doc, dict) else doc
            raise UpstreamError(f"{self.name} answered HTTP {status}: {msg}"[:300])
        try:
            text = doc["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(f"{self.name}: not an OpenAI chat completion "
                                "(no choices[0].message.content)") from None
        try:
            cost_usd = float(cost) if cost else 0.0
        except ValueError:
            cost_usd = 0.0
        return ChatReply(str(text), latency, cost_usd, _context_of(doc), doc)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class KeelChat:
    """A model configured in this keel, called through the pipeline as ``principal``."""

    def __init__(self, client: InternalClient, principal: Principal) -> None:
        self.client = client
        self.principal = principal
        self.name = "keel"

    async def chat(self, body: dict[str, Any]) -> ChatReply:
        done = await self.client.chat(self.principal, body,
                                      headers={"x-keel-cache": "bypass"})
        return ChatReply(done.text, done.latency_ms, done.cost_usd, "", done.body)

    async def aclose(self) -> None:
        """The client belongs to the app that built it."""
