"""Scrub secrets out of text that came from an upstream before a client sees it.

An upstream's error message is untrusted text: one that echoes the request hands keel's
own upstream API key (or a tool server's token) to whoever sent the prompt. Every message
relayed from an upstream goes through :class:`Redactor`, which removes

* the exact secrets keel sent with that request (and their URL-encoded and base64 forms);
* anything shaped like a credential: ``Bearer``/``Basic`` values, ``sk-...``/``keel_...``
  keys, JWTs, and ``api_key=...``/``"token": "..."`` style assignments;

and cuts what is left to a short summary. URLs are shown without user info or query.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit, urlunsplit

MASK = "[redacted]"
MAX_CHARS = 300

_SHAPES = re.compile(
    r"(?i)"
    r"\b(?:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"  # Authorization header values
    r"|\b(?:sk|pk|rk)-[A-Za-z0-9_-]{12,}"  # OpenAI-style and similar keys
    r"|\bkeel_[A-Za-z0-9_-]{16,}"  # keel's own API keys
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|(?<=[\"'\s{,?&;])(?:api[_-]?key|x-api-key|access[_-]?token|token|secret|password"
    r"|authorization)[\"']?\s*[:=]\s*[\"']?[^\s\"',;&}]{4,}"  # key=value / "key": "value"
)


class Redactor:
    """Removes known secrets and credential-shaped strings from untrusted text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s or len(s) < 6:  # too short to redact without mangling ordinary text
                continue
            forms.update({s, quote(s, safe=""), base64.b64encode(s.encode()).decode()})
        # longest first, so a secret that contains another is removed whole
        self._exact = sorted(forms, key=len, reverse=True)

    def exact(self, raw: bytes) -> bytes:
        """Only the known secrets, removed from a whole payload (a tool's answer), which
        is otherwise passed on unchanged."""
        for s in self._exact:
            raw = raw.replace(s.encode(), MASK.encode())
        return raw

    def __call__(self, text: str, limit: int = MAX_CHARS) -> str:
        for s in self._exact:
            text = text.replace(s, MASK)
        text = _SHAPES.sub(MASK, text)
        if len(text) > limit:
            text = text[:limit].rstrip() + " ..."
        return text


def safe_url(url: str) -> str:
    """``url`` without user info, query or fragment (they may carry credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "(unparseable URL)"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
