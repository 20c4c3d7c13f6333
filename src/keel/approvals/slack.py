"""Slack interactivity: verify ``X-Slack-Signature`` (v0) and read the clicked button."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson

from keel.errors import InvalidRequest, InvalidSignature

WINDOW_S = 300  # Slack's replay window: 5 minutes


def signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str | None, sig: str | None, body: bytes,
           now: float | None = None) -> None:
    if not timestamp or not sig:
        raise InvalidSignature("missing X-Slack-Request-Timestamp or X-Slack-Signature")
    try:
        ts = int(timestamp)
    except ValueError:
        raise InvalidSignature("X-Slack-Request-Timestamp is not a unix timestamp") from None
    if abs((now or time.time()) - ts) > WINDOW_S:
        raise InvalidSignature("stale Slack request: timestamp is outside the 5-minute window")
    if not sig.startswith("v0=") or not hmac.compare_digest(sig, signature(secret, timestamp,
                                                                           body)):
        raise InvalidSignature("X-Slack-Signature does not match the request body")


@dataclass(frozen=True)
class Click:
    decision: str  # "approve" | "deny"
    ref: str
    user: str
    response_url: str | None


def parse_click(body: bytes) -> Click:
    form = parse_qs(body.decode(errors="replace"))
    raw = (form.get("payload") or [""])[0]
    try:
        payload = orjson.loads(raw)
        action = payload["actions"][0]
        user = payload.get("user") or {}
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise InvalidRequest("expected a Slack block_actions payload with one action") from None
    kind = {"keel_approve": "approve", "keel_deny": "deny"}.get(action.get("action_id", ""))
    if kind is None or not isinstance(action.get("value"), str):
        raise InvalidRequest("unknown Slack action; expected keel_approve or keel_deny")
    who = user.get("username") or user.get("name") or user.get("id") or "slack-user"
    return Click(kind, action["value"], f"slack:{who}", payload.get("response_url"))
