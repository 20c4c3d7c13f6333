"""Scrub secrets out of text that came from an upstream before a client sees it.

An upstream's text is untrusted: one that echoes the request hands keel's own upstream
API key (or a tool server's token) to whoever sent the prompt. Two levels apply.

* Error messages relayed from an upstream go through :class:`Redactor`, which removes the
  known secrets (see below) and anything shaped like a credential: ``Bearer``/``Basic``
  values, ``sk-...``/``keel_...`` keys, JWTs, and ``api_key=...``/``"token": "..."``
  style assignments, and cuts what is left to a short summary. URLs are shown without
  user info or query.
* Successful answers (whole responses and stream chunks) only have the known secrets
  masked (:meth:`Redactor.secrets_only`, :func:`redact_answer`,
  :class:`AnswerStreamRedactor`): credential-shaped text is ordinary content in an
  answer about code, so it is left alone.

A known secret is matched case-insensitively, and also in its URL-encoded, base64, hex
(lower or upper case) and reversed forms; error text also matches it with one separator
character between its characters (``s k - l i v e``). All forms are one precompiled
regex, so a text is scanned once however many secrets are configured.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncGenerator, Iterable
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

MASK = "[redacted]"
MAX_CHARS = 300
MIN_SECRET = 6  # shorter values cannot be masked without mangling ordinary text

_SHAPES = re.compile(
    r"(?i)"
    r"\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # Authorization header values
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{12,}"  # OpenAI-style and similar keys
    r"|\bkeel_[A-Za-z0-9_-]{16,}"  # keel's own API keys
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|(?<=[\"'\s{,?&;])(?:api[_-]?key|x-api-key|access[_-]?token|token|secret|password"
    r"|authorization)[\"']?\s*[:=]\s*[\"']?[^\s\"',;&}]{4,}"  # key=value / "key": "value"
)


def _forms(secret: str) -> set[str]:
    """The encodings of ``secret`` an echoing upstream is likely to produce."""
    raw = secret.encode()
    hexed = raw.hex()
    return {secret, quote(secret, safe=""), base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b64encode(raw).decode().rstrip("="), hexed, hexed.upper(), secret[::-1]}


class Redactor:
    """Removes known secrets and credential-shaped strings from untrusted text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        plain = {s for s in secrets if s and len(s) >= MIN_SECRET}
        forms: set[str] = set()
        for s in plain:
            forms |= _forms(s)
        # longest first, so a secret that contains another is removed whole
        self._exact = sorted(forms, key=len, reverse=True)
        self.longest = len(self._exact[0]) if self._exact else 0
        # what a streamed text may end with while a secret could still be arriving: the
        # stream holds back only such a tail, not a fixed window (a long key's hex form
        # would otherwise delay every answer by hundreds of characters)
        self.prefixes = frozenset(f.lower()[:n] for f in forms for n in range(1, len(f) + 1))
        self.starts = frozenset(f[0].lower() for f in forms)
        self._pattern: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None
        self._loose: re.Pattern[str] | None = None
        if self._exact:
            alts = "|".join(re.escape(f) for f in self._exact)
            self._pattern = re.compile(alts, re.IGNORECASE)
            self._bytes = re.compile(alts.encode(), re.IGNORECASE)
            # one separator between characters ("s k - l i v e"), error text only
            self._loose = re.compile(
                "|".join(r"[\s._:,/-]?".join(re.escape(ch) for ch in s)
                         for s in sorted(plain, key=len, reverse=True)),
                re.IGNORECASE)

    @property
    def active(self) -> bool:
        """Whether any secret is known (else every method returns its input)."""
        return self._pattern is not None

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """The compiled regex of every known form of every known secret."""
        return self._pattern

    def exact(self, raw: bytes) -> bytes:
        """Only the known secrets, removed from a whole payload (a tool's answer), which
        is otherwise passed on unchanged."""
        if self._bytes is None:
            return raw
        return self._bytes.sub(MASK.encode(), raw)

    def secrets_only(self, text: str) -> str:
        """``text`` with the known secrets masked and nothing else touched (answers)."""
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def __call__(self, text: str, limit: int = MAX_CHARS) -> str:
        if self._pattern is not None and self._loose is not None:
            text = self._loose.sub(MASK, self._pattern.sub(MASK, text))
        text = _SHAPES.sub(MASK, text)
        if len(text) > limit:
            text = text[:limit].rstrip() + " ..."
        return text


def configured_secrets(*roots: object) -> list[str]:
    """Every ``SecretStr`` value found in settings objects (pydantic models, dicts and
    lists of them): the upstream API keys of the model table, tool headers, tokens."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(obj: object) -> None:
        if isinstance(obj, SecretStr):
            found.append(obj.get_secret_value())
            return
        if id(obj) in seen:
            return
        if isinstance(obj, BaseModel):
            seen.add(id(obj))
            for name in type(obj).model_fields:
                walk(getattr(obj, name, None))
            for value in (obj.__pydantic_extra__ or {}).values():
                walk(value)
        elif isinstance(obj, dict):
            seen.add(id(obj))
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            seen.add(id(obj))
            for value in obj:
                walk(value)

    for root in roots:
        walk(root)
    return found


def redact_answer(data: Any, redactor: Redactor) -> Any:
    """A whole (non-streamed) answer with the known secrets masked in every string; the
    structure is kept. Returns ``data`` itself, edited in place where it is a dict/list."""
    pattern = redactor.pattern
    if pattern is None:
        return data
    if isinstance(data, str):
        return pattern.sub(MASK, data) if pattern.search(data) else data
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, (str, dict, list)):
                data[k] = redact_answer(v, redactor)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            if isinstance(v, (str, dict, list)):
                data[i] = redact_answer(v, redactor)
    return data


# stream fields whose text arrives in pieces: a secret may be split across chunks
_STREAMED = frozenset({"content", "reasoning_content", "reasoning", "refusal", "text",
                       "arguments"})


class AnswerStreamRedactor:
    """Masks the known secrets in a stream of OpenAI-shaped chunks.

    Text fields that arrive in pieces (``delta.content``, ``text``, tool call
    ``arguments``...) keep back the tail that could be the start of a secret (in any of its
    forms) until the next piece (or the choice's ``finish_reason``, or the end of the
    stream) shows whether it is one; text that cannot start a secret is sent at once. Other
    strings are masked whole.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._r = redactor
        self._pattern = redactor.pattern
        self._hold = max(redactor.longest - 1, 0)
        self._pending: dict[tuple[Any, ...], str] = {}

    def _feed(self, key: tuple[Any, ...], text: str) -> str:
        """The part of ``pending + text`` that is safe to send now, masked."""
        assert self._pattern is not None
        buf = self._pending.pop(key, "") + text
        cut = len(buf)
        starts, prefixes = self._r.starts, self._r.prefixes
        for i in range(max(0, len(buf) - self._hold), len(buf)):
            if buf[i].lower() in starts and buf[i:].lower() in prefixes:
                cut = i  # the longest tail that may be the start of a secret
                break
        out: list[str] = []
        pos = 0
        for m in self._pattern.finditer(buf):
            if m.start() >= cut:  # may still grow into a longer form: decide later
                break
            out.append(buf[pos:m.start()])
            out.append(MASK)
            pos = m.end()
        end = max(cut, pos)
        out.append(buf[pos:end])
        if end < len(buf):
            self._pending[key] = buf[end:]
        return "".join(out)

    def _walk(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, str):
                    obj[k] = (self._feed((*path, k), v) if k in _STREAMED
                              else self._r.secrets_only(v))
                elif isinstance(v, (dict, list)):
                    obj[k] = self._walk(v, (*path, k))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                # choices and tool calls carry their own "index": pieces of one choice
                # or call share a buffer across chunks whatever their list position
                pos = v.get("index", i) if isinstance(v, dict) else i
                if not isinstance(pos, int):
                    pos = i
                if isinstance(v, str):
                    obj[i] = self._r.secrets_only(v)
                elif isinstance(v, (dict, list)):
                    obj[i] = self._walk(v, (*path, pos))
        return obj

    def _flush_into(self, chunk: dict[str, Any], prefix: tuple[Any, ...] | None) -> None:
        """Put the held-back text (of one choice, or all) back into ``chunk``."""
        keys = [k for k in self._pending if prefix is None or k[:len(prefix)] == prefix]
        for key in keys:
            tail = self._pending.pop(key)
            if tail:
                _place(chunk, key, self._r.secrets_only(tail))

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        chunk = self._walk(chunk, ())
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                self._flush_into(chunk, ("choices", choice.get("index", 0)))
        return chunk

    def rest(self, last: dict[str, Any] | None) -> dict[str, Any] | None:
        """A last chunk with the text still held back when the stream ended, if any."""
        if not any(self._pending.values()):
            return None
        out: dict[str, Any] = {k: last[k] for k in ("id", "object", "created", "model")
                               if last and k in last}
        out["choices"] = []
        self._flush_into(out, None)
        return out

    async def wrap(self, chunks: AsyncGenerator[dict[str, Any], None]
                   ) -> AsyncGenerator[dict[str, Any], None]:
        last: dict[str, Any] | None = None
        try:
            async for c in chunks:
                last = self.chunk(c)
                yield last
            tail = self.rest(last)
            if tail is not None:
                yield tail
        finally:
            await chunks.aclose()


def _place(root: dict[str, Any], key: tuple[Any, ...], text: str) -> None:
    """Append ``text`` at ``key`` (a path whose list steps are an element's ``index``),
    creating the list elements and dicts on the way."""
    node: Any = root
    for i, step in enumerate(key[:-1]):
        nxt_is_list = isinstance(key[i + 1], int)
        if isinstance(node, list):
            found = next((e for e in node if isinstance(e, dict)
                          and e.get("index", None) == step), None)
            if found is None:
                found = {"index": step}
                node.append(found)
            node = found
        else:
            child = node.get(step)
            if child is None:
                child = [] if nxt_is_list else {}
                node[step] = child
            node = child
    last = key[-1]
    node[last] = (node.get(last) or "") + text


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (they may carry credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "(unparseable URL)"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
