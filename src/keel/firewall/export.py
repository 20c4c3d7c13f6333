"""Blocked (and, in flag mode, flagged) prompts from the request log, as a regression set and
for the console."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from sqlalchemy import Connection, or_, select

from keel.firewall.extract import judged_texts
from keel.metering.request_log import requests

BLOCK_CODES = ("prompt_blocked", "client_banned")
FLAG_MARK = '"action":"flag"'  # a firewall decision in flag mode (answered, not blocked)


def _decision(decisions: str | None) -> tuple[str, str]:
    """(action, rule) of the request's firewall decision; ("", "") when unreadable."""
    try:
        parsed = orjson.loads(decisions or "[]")
    except orjson.JSONDecodeError:
        return "", ""
    for d in parsed if isinstance(parsed, list) else []:
        if not isinstance(d, dict):
            continue
        if d.get("stage") == "firewall" and d.get("action") in ("block", "banned", "flag"):
            return str(d["action"]), str(d.get("detail", "")).split(" ")[0]
    return "", ""


def recent_blocks(c: Connection, limit: int = 200) -> list[dict[str, Any]]:
    q = (select(requests.c.id, requests.c.ts, requests.c.tenant, requests.c.client_ip,
                requests.c.key_id, requests.c.error_code, requests.c.decisions,
                requests.c.request_body)
         .where(or_(requests.c.error_code.in_(BLOCK_CODES),
                    requests.c.decisions.contains(FLAG_MARK)))
         .order_by(requests.c.ts.desc()).limit(limit))
    out = []
    for r in c.execute(q):
        row = {str(k): v for k, v in r._asdict().items()}
        row["action"], row["rule"] = _decision(row.pop("decisions"))
        row["flagged"] = row["action"] == "flag"
        out.append(row)
    return out


def rule_hits(blocks: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return Counter(b["rule"] for b in blocks if b["rule"] and not b["flagged"]).most_common()


def flag_hits(blocks: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """Rule hits in flag mode: what would have been blocked."""
    return Counter(b["rule"] for b in blocks if b["rule"] and b["flagged"]).most_common()


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
        users = judged_texts(body, ["messages", "prompt", "input"])
        rows.append({"id": b["id"], "text": "\n".join(users), "label": "attack",
                     "rule": b["rule"], "ts": b["ts"]})
    return rows
