"""Who a firewall strike is against: the end user, not the application that relays them.

Most keel clients are application backends: one API key and one socket address carry all of
that app's end users, so striking the key or the address would let one user take the whole
app down. The end user is, in order: the configured header (``x-keel-end-user``), the OpenAI
``user`` field, or the client address a *trusted* proxy reported in ``X-Forwarded-For``.
The key and the socket address are struck only when the operator lists them in
``firewall.ban_fallback``; otherwise a key whose anonymous traffic keeps being blocked is
*watched* (reported and rate-limited), never banned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from keel.config import FirewallMode, FirewallSettings

MAX_ID_CHARS = 200  # longer ids are kept as a digest (bounded KV keys)


@dataclass(frozen=True, slots=True)
class Identity:
    subjects: tuple[str, ...]  # what strikes and bans go against
    checks: tuple[str, ...]  # whose bans refuse this request (incl. manual key/ip bans)
    watch: str | None  # the key watched when the request names no end user
    source: str  # how the end user was identified, for logs and messages


def _clean_id(raw: str) -> str | None:
    text = "".join(c for c in raw if c.isprintable()).strip()
    if not text:
        return None
    if len(text) > MAX_ID_CHARS or ":" in text:
        digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]
        return f"sha256-{digest}"
    return text


def end_user_id(settings: FirewallSettings, body: dict[str, Any],
                headers: dict[str, str]) -> tuple[str | None, str]:
    """The end user's id (the configured header, else the OpenAI ``user`` field), cleaned
    like a strike subject, and where it came from; ``(None, "none")`` when neither is set.
    ``headers`` have lower-case names."""
    header = settings.end_user_header.lower()
    raw = headers.get(header) if header else None
    who = _clean_id(raw) if raw else None
    if who is not None:
        return who, f"header {header}"
    user = body.get("user")
    if isinstance(user, str) and (who := _clean_id(user)) is not None:
        return who, "user field"
    return None, "none"


def resolve(settings: FirewallSettings, *, tenant: str, key_id: str, body: dict[str, Any],
            headers: dict[str, str], client_ip: str, forwarded_ip: str | None) -> Identity:
    subjects: list[str] = []
    who, source = end_user_id(settings, body, headers)
    if who is not None:
        subjects.append(f"user:{tenant}:{who}")
    elif forwarded_ip:
        subjects.append(f"ip:{forwarded_ip}")
        source = "address from a trusted proxy"
    key, ip = f"key:{key_id}", f"ip:{client_ip}"
    watch = None
    if not subjects:
        if "key" in settings.ban_fallback:
            subjects.append(key)
        if "ip" in settings.ban_fallback:
            subjects.append(ip)
        source = "fallback: " + ", ".join(settings.ban_fallback) if subjects else "none"
        if "key" not in settings.ban_fallback:
            watch = key
    checks = tuple(dict.fromkeys([*subjects, key, ip]))
    return Identity(tuple(subjects), checks, watch, source)


def mode_for(settings: FirewallSettings, tenant: str, route: str) -> FirewallMode:
    """The firewall mode for a tenant and route: "TENANT/ROUTE", "TENANT", "*/ROUTE", then
    the global ``firewall.mode``."""
    modes = settings.modes
    if modes:
        for key in (f"{tenant}/{route}", tenant, f"*/{route}"):
            mode = modes.get(key)
            if mode is not None:
                return mode
    return settings.mode


@dataclass(frozen=True, slots=True)
class InternalCall:
    """A model call keel makes itself on behalf of a request the firewall already admitted
    (a reasoning run's samples and judges): its prompt is the already-checked question or
    keel-authored text quoting it, so the firewall does not scan it (nor strike anyone for
    it) and only refuses the call when the end user or the key has been banned since."""

    end_user: str | None  # the admitted request's end user (see :func:`end_user_id`)
    purpose: str  # e.g. "sample-3", "judge-final", for the request log


# Set only by keel's own code around an in-process pipeline call, never from a client's
# headers or body, so a client cannot claim to be an internal call.
INTERNAL_CALL: ContextVar[InternalCall | None] = ContextVar("keel_firewall_internal_call",
                                                            default=None)


@contextmanager
def internal_call(end_user: str | None, purpose: str) -> Iterator[None]:
    """Mark the pipeline calls made inside this block as :class:`InternalCall` s."""
    token = INTERNAL_CALL.set(InternalCall(end_user, purpose))
    try:
        yield
    finally:
        INTERNAL_CALL.reset(token)
