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


def resolve(settings: FirewallSettings, *, tenant: str, key_id: str, body: dict[str, Any],
            headers: dict[str, str], client_ip: str, forwarded_ip: str | None) -> Identity:
    subjects: list[str] = []
    source = "none"
    header = settings.end_user_header.lower()
    raw = headers.get(header) if header else None
    user = body.get("user")
    who = _clean_id(raw) if raw else None
    if who is not None:
        source = f"header {header}"
    elif isinstance(user, str) and (who := _clean_id(user)) is not None:
        source = "user field"
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
