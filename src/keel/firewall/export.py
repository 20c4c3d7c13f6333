"""Blocked prompts from the request log, as a regression set and for the console."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from sqlalchemy import Connection, select

from keel.firewall.extract import extract_texts
from keel.metering.request_log import requests

BLOCK_CODES = ("prompt_blocked", "client_banned")


def _rule(decisions: str | None) -> str:
    try:
        parsed = orjson.loads(decisions or "[]")
    except orjson.JSONDecodeError:
        return ""
    for d in parsed if isinstance(parsed, list) else []:
        if not isinstance(d, dict):
            continue
        if d.get("stage") == "firewall" and d.get("action") in ("block", "banned"):
            return str(d.get("detail", "")).split(" ")[0]
    return ""


def recent_blocks(c: Connection, limit: int = 200) -> list[dict[str, Any]]:
    q = (select(requests.c.id, requests.c.ts, requests.c.tenant, requests.c.client_ip,
                requests.c.key_id, requests.c.error_code, requests.c.decisions,
                requests.c.request_body)
         .where(requests.c.error_code.in_(BLOCK_CODES))
         .order_by(requests.c.ts.desc()).limit(limit))
    out = []
    for r in c.execute(q):
        row = {str(k): v for k, v in r._asdict().items()}
        row["rule"] = _rule(row.pop("decisions"))
        out.append(row)
    return out


def rule_hits(blocks: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return Counter(b["rule"] for b in blocks if b["rule"]).most_common()


def blocked_rows(c: Connection, limit: int) -> list[dict[str, Any]]:
    """Blocked prompts as regression rows. Bodies that were stored cut mid-JSON (logs from
    before bodies were shortened as valid JSON) are recovered as raw text, not skipped."""
    rows = []
    for b in recent_blocks(c, limit):
        if b["error_code"] != "prompt_blocked" or not b["request_body"]:
            continue
        try:
            body = orjson.loads(b["request_body"])
        except orjson.JSONDecodeError:
            rows.append({"id": b["id"], "text": b["request_body"], "label": "attack",
                         "rule": b["rule"], "ts": b["ts"], "truncated": True})
            continue
        if not isinstance(body, dict):
            continue
        _, users = extract_texts(body, ["messages", "prompt", "input"])
        rows.append({"id": b["id"], "text": "\n".join(users), "label": "attack",
                     "rule": b["rule"], "ts": b["ts"]})
    return rows
