"""Page the on-call: POST the incident, why the run stopped and its evidence to a webhook
(PagerDuty / Opsgenie / Alertmanager-style receivers accept a JSON body)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson

log = logging.getLogger("keel.remediation")


async def page(url: str, payload: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Send the page; returns what happened (for the audit), never raises."""
    if not url:
        log.warning("remediation: %s needs a human (%s); no page_webhook_url configured",
                    payload.get("incident", {}).get("id"), payload.get("reason"))
        return {"sent": False, "detail": "no [remediation] page_webhook_url configured; the "
                                         "incident is listed in the console and the API"}
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as c:
            r = await c.post(url, content=orjson.dumps(payload, default=str),
                             headers={"content-type": "application/json",
                                      "x-keel-event": "remediation.page"})
        return {"sent": r.status_code < 300, "detail": f"HTTP {r.status_code}"}
    except httpx.HTTPError as exc:
        log.warning("remediation: paging failed: %s", type(exc).__name__)
        return {"sent": False, "detail": type(exc).__name__}
