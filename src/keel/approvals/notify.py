"""Notification channels: Slack-compatible incoming webhook, HMAC-signed webhook, the log.

The console and ``keel approvals list`` read pending approvals from the database, so they
need no push. Messages carry one-time references, never the workflow id; log lines carry
neither. A failing channel is recorded in the audit log and never fails the workflow.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from keel.approvals.models import Approval
from keel.approvals.settings import ApprovalsSettings

log = logging.getLogger("keel.approvals")


@dataclass(frozen=True)
class Delivery:
    channel: str
    ok: bool
    detail: str


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Keel-Signature`` of the generic webhook: v1=HMAC-SHA256(secret, "ts.body")."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def _money(a: Approval) -> str:
    return f"{a.amount:,.2f}" if a.amount is not None else "-"


def slack_message(a: Approval, event: str, ref: str | None, link: str | None,
                  labels: tuple[str, str] = ("Approve", "Deny")) -> dict[str, Any]:
    title = {"requested": "Approval needed", "reminder": "Reminder: approval needed",
             "decided": f"Approval {a.status}"}.get(event, event)
    text = (f"*{title}*: `{a.action}` amount {_money(a)} risk {a.risk_level}\n"
            f"*Reason:* {a.reason or '-'}\n*Requested by:* {a.requested_by or '-'}  "
            f"*Expires:* <!date^{int(a.expires_at)}^{{date_short_pretty}} {{time}}|"
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(a.expires_at))} UTC>")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn",
                                                                   "text": text}}]
    if ref is not None:
        buttons: list[dict[str, Any]] = [
            {"type": "button", "action_id": "keel_approve", "style": "primary",
             "text": {"type": "plain_text", "text": labels[0]}, "value": ref},
            {"type": "button", "action_id": "keel_deny", "style": "danger",
             "text": {"type": "plain_text", "text": labels[1]}, "value": ref},
        ]
        if link:
            buttons.append({"type": "button", "action_id": "keel_open", "url": link,
                            "text": {"type": "plain_text", "text": "Review"}})
        blocks.append({"type": "actions", "elements": buttons})
    return {"text": f"{title}: {a.action} {_money(a)}", "blocks": blocks}


class Notifier:
    def __init__(self, settings: ApprovalsSettings, *, timeout_s: float = 5.0,
                 labels: Callable[[str], tuple[str, str]] | None = None) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.labels = labels or (lambda _action: ("Approve", "Deny"))

    def channels(self) -> list[str]:
        s = self.settings
        return [c for c, on in (("slack", s.slack_webhook_url is not None),
                                ("webhook", bool(s.webhook_url))) if on]

    async def send(self, channel: str, a: Approval, event: str, ref: str | None,
                   link: str | None) -> Delivery:
        try:
            if channel == "slack":
                return await self._slack(a, event, ref, link)
            if channel == "webhook":
                return await self._webhook(a, event, ref, link)
        except httpx.HTTPError as exc:
            log.warning("approval %s: %s notification failed: %s", a.id, channel,
                        type(exc).__name__)
            return Delivery(channel, False, type(exc).__name__)
        return Delivery(channel, False, "unknown channel")

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(timeout=self.timeout_s) as c:
            return await c.post(url, content=body,
                                headers={"content-type": "application/json", **headers})

    async def _slack(self, a: Approval, event: str, ref: str | None, link: str | None
                     ) -> Delivery:
        assert self.settings.slack_webhook_url is not None
        body = orjson.dumps(slack_message(a, event, ref, link, self.labels(a.action)))
        r = await self._post(self.settings.slack_webhook_url.get_secret_value(), body, {})
        return Delivery("slack", r.status_code < 300, f"HTTP {r.status_code}")

    async def _webhook(self, a: Approval, event: str, ref: str | None, link: str | None
                       ) -> Delivery:
        payload = {"event": event, "approval": a.public(), "decision_url": link,
                   "reference": ref}
        body = orjson.dumps(payload)
        ts = str(int(time.time()))
        headers = {"x-keel-timestamp": ts, "x-keel-event": event}
        if self.settings.webhook_secret is not None:
            headers["x-keel-signature"] = sign(
                self.settings.webhook_secret.get_secret_value(), ts, body)
        r = await self._post(self.settings.webhook_url, body, headers)
        return Delivery("webhook", r.status_code < 300, f"HTTP {r.status_code}")
