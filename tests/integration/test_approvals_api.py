"""Approvals through the HTTP API, the decision page and Slack, with DBOS on real SQLite.

Actions are real handlers writing to a SQLite file; Slack and the generic webhook post to a
real HTTP receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from pydantic import SecretStr

from approval_helpers import ActionLog, Receiver
from keel.approvals import slack
from keel.approvals.notify import sign
from keel.approvals.service import ApprovalsService
from keel.config import Settings
from keel.gateway.services import Services

SLACK_SECRET = "slack-signing-secret"
HOOK_SECRET = "hook-secret"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings; the tool gateway is not needed here (its own tests cover it)."""
    settings.tools.enabled = False
    return settings


@pytest.fixture
def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r  # type: ignore[misc]
    r.close()


@pytest.fixture
def actions(tmp_path: Path, services: Services, settings: Settings, receiver: Receiver
            ) -> ActionLog:
    log = ActionLog(tmp_path / "actions.db")
    log.register(services.get(ApprovalsService).registry)
    a = settings.approvals
    a.slack_webhook_url = SecretStr(receiver.url)
    a.slack_signing_secret = SecretStr(SLACK_SECRET)
    a.webhook_url = receiver.url
    a.webhook_secret = SecretStr(HOOK_SECRET)
    a.polling_interval_s = 0.02
    return log


def H(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def propose(client: httpx.AsyncClient, key: str, **kw: Any) -> dict[str, Any]:
    body = {"action": "pay", "arguments": {"to": "acme", "cents": 120000}, "amount": 1200.0,
            "risk_level": "HIGH", "reason": "vendor invoice", **kw}
    r = await client.post("/v1/approvals", json=body, headers=H(key))
    assert r.status_code == 201, r.text
    return dict(r.json())


def slack_refs(receiver: Receiver) -> list[str]:
    out = []
    for msg in receiver.json():
        for block in msg.get("blocks", []):
            for el in block.get("elements", []):
                if el.get("action_id") == "keel_approve":
                    out.append(el["value"])
    return out


async def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_high_risk_waits_then_approve_runs_action_once(
    client: httpx.AsyncClient, admin_key: str, user_key: str, actions: ActionLog,
    receiver: Receiver,
) -> None:
    a = await propose(client, user_key)
    assert a["status"] == "pending" and a["policy"] == "high-risk-waits"
    assert "workflow_id" not in a
    r = await client.get(f"/v1/approvals/{a['id']}?wait=0.3", headers=H(user_key))
    assert r.json()["status"] == "pending" and actions.runs() == []
    r = await client.post(f"/v1/approvals/{a['id']}/decision", json={"decision": "approve"},
                          headers=H(user_key))
    assert r.status_code == 403  # deciding needs an admin key
    r = await client.post(f"/v1/approvals/{a['id']}/decision",
                          json={"decision": "approve", "note": 5}, headers=H(admin_key))
    assert r.status_code == 400 and r.json()["error"]["param"] == "note"  # nothing decided
    r = await client.post(f"/v1/approvals/{a['id']}/decision",
                          json={"decision": "approve", "note": "ok"}, headers=H(admin_key))
    assert r.status_code == 200, r.text
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(user_key))).json()
    assert done["status"] == "approved" and done["outcome"] == "executed"
    assert done["result"] == {"paid": "acme"}
    runs = actions.runs()
    assert len(runs) == 1 and runs[0][0] == a["id"]  # the idempotency key
    await wait_for(lambda: len(receiver.posts) >= 4)  # requested + decided, slack + webhook
    trail = (await client.get(f"/v1/approvals/{a['id']}/audit", headers=H(admin_key))).json()
    events = [t["event"] for t in trail["data"]]
    assert {"requested", "decision", "executed"} <= set(events)
    decision = next(t for t in trail["data"] if t["event"] == "decision")
    assert decision["ip"] == "127.0.0.1" and decision["actor"].startswith("key:")


async def test_low_risk_runs_without_waiting(
    client: httpx.AsyncClient, services: Services, actions: ActionLog
) -> None:
    orchestrator = services.keys.create("acme").secret  # a tenant key without an agent
    a = await propose(client, orchestrator, risk_level="low", amount=5.0,
                      arguments={"to": "acme", "cents": 500})
    assert a["status"] == "auto_approved" and a["policy"] == "low-risk-runs"
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(orchestrator))
            ).json()
    assert done["outcome"] == "executed" and len(actions.runs()) == 1


async def test_an_agent_cannot_route_itself_past_a_human(
    client: httpx.AsyncClient, services: Services, user_key: str, actions: ActionLog
) -> None:
    # the agent's own key says "low": no auto rule applies to it by default
    a = await propose(client, user_key, risk_level="low", amount=None,
                      arguments={"order_id": "o1", "amount": 50000})
    assert a["status"] == "pending" and a["policy"] == "large-amount-waits"
    small = await propose(client, user_key, risk_level="low", amount=None,
                          arguments={"order_id": "o1", "amount": 5})
    assert small["status"] == "pending" and small["policy"].startswith("default")
    # hiding the amount in the arguments does not dodge the amount rule for anyone
    orchestrator = services.keys.create("acme").secret
    for args in ({"order_id": "o1", "amount": 50000}, {"refund": {"amount_cents": 500000}},
                 {"total": "50000.00"}):
        hidden = await propose(client, orchestrator, risk_level="low", amount=None,
                               arguments=args)
        assert hidden["status"] == "pending" and hidden["policy"] == "large-amount-waits"
    await asyncio.sleep(0.3)
    assert actions.runs() == []


async def test_an_operator_can_let_agent_requests_run(
    client: httpx.AsyncClient, settings: Settings, user_key: str, actions: ActionLog
) -> None:
    from keel.approvals.settings import RiskRule

    settings.approvals.rules = [RiskRule(name="agents-may-ping", route="auto",
                                         actions=["pay"], agent_requests=True)]
    a = await propose(client, user_key, risk_level="low", amount=1.0)
    assert a["status"] == "auto_approved" and a["policy"] == "agents-may-ping"


async def test_timeout_auto_denies_after_reminders(
    client: httpx.AsyncClient, admin_key: str, user_key: str, actions: ActionLog,
    receiver: Receiver,
) -> None:
    a = await propose(client, user_key, timeout_s=1.0)
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=15", headers=H(user_key))).json()
    assert done["status"] == "timed_out" and done["outcome"] == "timed_out"
    assert done["decided_by"] == "timeout" and done["reminders_sent"] == 2
    assert done["result"] == {"notified": "denied"}  # the denial branch ran
    assert actions.runs() == []
    events = [m.get("text", "") for m in receiver.json()]
    assert sum("Reminder" in t for t in events) == 2
    # deciding afterwards is refused, and recorded
    r = await client.post(f"/v1/approvals/{a['id']}/decision", json={"decision": "approve"},
                          headers=H(admin_key))
    assert r.status_code == 409 and r.json()["error"]["code"] == "approval_already_decided"


async def test_concurrent_approve_and_deny_exactly_one_wins(
    client: httpx.AsyncClient, admin_key: str, user_key: str, actions: ActionLog
) -> None:
    a = await propose(client, user_key)
    url = f"/v1/approvals/{a['id']}/decision"
    rs = await asyncio.gather(*[
        client.post(url, json={"decision": d}, headers=H(admin_key))
        for d in ("approve", "deny", "approve", "deny", "approve", "deny")])
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 409, 409, 409, 409, 409], [r.text for r in rs]
    winner = next(r.json() for r in rs if r.status_code == 200)
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(user_key))).json()
    assert done["status"] == winner["status"]
    assert len(actions.runs()) == (1 if winner["status"] == "approved" else 0)
    trail = (await client.get(f"/v1/approvals/{a['id']}/audit", headers=H(admin_key))).json()
    attempts = [t for t in trail["data"] if t["event"] == "decision"]
    assert len(attempts) == 6 and sum(t["accepted"] for t in attempts) == 1


async def test_link_page_never_decides_and_post_needs_csrf(
    client: httpx.AsyncClient, user_key: str, actions: ActionLog, receiver: Receiver
) -> None:
    a = await propose(client, user_key)
    await wait_for(lambda: len(slack_refs(receiver)) >= 1)
    ref = slack_refs(receiver)[0]
    assert a["id"] not in ref
    for _ in range(3):  # unfurlers and mail scanners prefetch
        page = await client.get(f"/approvals/r/{ref}")
        assert page.status_code == 200 and 'id="approve"' in page.text
    assert (await client.get(f"/v1/approvals/{a['id']}", headers=H(user_key))
            ).json()["status"] == "pending"
    csrf = page.cookies.get("keel_approval_csrf") or client.cookies.get("keel_approval_csrf")
    assert csrf
    form = {"decision": "approve", "name": "dana"}
    bad = await client.post(f"/approvals/r/{ref}", content=urlencode({**form, "csrf": "x"}),
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert bad.status_code == 403
    ok = await client.post(f"/approvals/r/{ref}", content=urlencode({**form, "csrf": csrf}),
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert ok.status_code == 200 and 'id="done"' in ok.text, ok.text
    again = await client.post(f"/approvals/r/{ref}", content=urlencode({**form, "csrf": csrf}),
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert again.status_code == 409  # double click: the reference is used
    unknown = await client.post("/approvals/r/not-a-ref",
                                content=urlencode({**form, "csrf": csrf}),
                                headers={"content-type": "application/x-www-form-urlencoded"})
    assert unknown.status_code == 404
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(user_key))).json()
    assert done["decided_by"] == "link:dana" and done["decided_via"] == "link"
    assert len(actions.runs()) == 1


async def test_expired_reference_is_rejected(
    client: httpx.AsyncClient, user_key: str, actions: ActionLog, receiver: Receiver
) -> None:
    a = await propose(client, user_key, timeout_s=0.6)
    await wait_for(lambda: len(slack_refs(receiver)) >= 1)
    ref = slack_refs(receiver)[0]
    await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(user_key))
    page = await client.get(f"/approvals/r/{ref}")
    csrf = client.cookies.get("keel_approval_csrf")
    r = await client.post(f"/approvals/r/{ref}",
                          content=urlencode({"decision": "approve", "csrf": csrf}),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert page.status_code == 200 and r.status_code == 410


def slack_request(ref: str, action_id: str, ts: int | None = None,
                  secret: str = SLACK_SECRET) -> tuple[bytes, dict[str, str]]:
    payload = {"type": "block_actions", "user": {"id": "U1", "username": "sam"},
               "actions": [{"action_id": action_id, "value": ref}]}
    body = urlencode({"payload": orjson.dumps(payload).decode()}).encode()
    stamp = str(ts if ts is not None else int(time.time()))
    return body, {"x-slack-request-timestamp": stamp,
                  "x-slack-signature": slack.signature(secret, stamp, body),
                  "content-type": "application/x-www-form-urlencoded"}


async def test_slack_interactivity_verifies_signature_and_window(
    client: httpx.AsyncClient, admin_key: str, user_key: str, actions: ActionLog,
    receiver: Receiver,
) -> None:
    a = await propose(client, user_key)
    await wait_for(lambda: len(slack_refs(receiver)) >= 1)
    ref = slack_refs(receiver)[0]
    url = "/approvals/slack/interactivity"
    body, h = slack_request(ref, "keel_deny", secret="wrong")
    assert (await client.post(url, content=body, headers=h)).status_code == 401
    body, h = slack_request(ref, "keel_deny", ts=int(time.time()) - 301)
    r = await client.post(url, content=body, headers=h)
    assert r.status_code == 401 and "stale" in r.json()["error"]["message"]
    body, h = slack_request(ref, "keel_deny")
    r = await client.post(url, content=body + b"x", headers=h)  # body tampered
    assert r.status_code == 401
    r = await client.post(url, content=body, headers=h)
    assert r.status_code == 200, r.text
    assert "denied by slack:sam" in r.json()["text"]
    r = await client.post(url, content=body, headers=h)  # Slack retries / double click
    assert r.status_code == 409
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(user_key))).json()
    assert done["status"] == "denied" and done["outcome"] == "denied"
    assert actions.runs() == []
    trail = (await client.get(f"/v1/approvals/{a['id']}/audit", headers=H(admin_key))).json()
    assert [t["accepted"] for t in trail["data"] if t["event"] == "decision"] == [False, True]


async def test_generic_webhook_is_hmac_signed(
    client: httpx.AsyncClient, user_key: str, actions: ActionLog, receiver: Receiver
) -> None:
    a = await propose(client, user_key)
    await wait_for(lambda: any("x-keel-signature" in h for h, _ in receiver.posts))
    headers, body = next((h, b) for h, b in receiver.posts if "x-keel-signature" in h)
    assert headers["x-keel-signature"] == sign(HOOK_SECRET, headers["x-keel-timestamp"], body)
    expected = "v1=" + hmac.new(HOOK_SECRET.encode(),
                                headers["x-keel-timestamp"].encode() + b"." + body,
                                hashlib.sha256).hexdigest()
    assert headers["x-keel-signature"] == expected
    msg = orjson.loads(body)
    assert msg["event"] == "requested" and msg["approval"]["id"] == a["id"]
    assert "workflow_id" not in body.decode() and f"approval-{a['id']}" not in body.decode()


async def test_bad_input_gets_clear_4xx(
    client: httpx.AsyncClient, admin_key: str, user_key: str, actions: ActionLog
) -> None:
    r = await client.post("/v1/approvals", json={"amount": 3}, headers=H(user_key))
    assert r.status_code == 400 and "action" in r.json()["error"]["message"]
    r = await client.post("/v1/approvals", json={"action": "pay", "amount": "lots"},
                          headers=H(user_key))
    assert r.status_code == 400
    r = await client.post("/v1/approvals", content=b"[1", headers=H(user_key))
    assert r.status_code == 400
    assert (await client.get("/v1/approvals/apr_nope", headers=H(user_key))).status_code == 404
    a = await propose(client, user_key)
    r = await client.get(f"/v1/approvals/{a['id']}?wait=soon", headers=H(user_key))
    assert r.status_code == 400
    r = await client.post(f"/v1/approvals/{a['id']}/decision", json={"decision": "maybe"},
                          headers=H(admin_key))
    assert r.status_code == 400
    r = await client.get("/v1/approvals?status=weird", headers=H(user_key))
    assert r.status_code == 400
    listing = (await client.get("/v1/approvals?status=pending", headers=H(user_key))).json()
    assert [x["id"] for x in listing["data"]] == [a["id"]]


async def test_console_lists_pending_and_decides(
    client: httpx.AsyncClient, admin_key: str, user_key: str, actions: ActionLog
) -> None:
    a = await propose(client, user_key)
    login = await client.post("/console/login", content=urlencode({"api_key": admin_key}),
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert login.status_code == 303
    page = await client.get("/console/approvals")
    assert page.status_code == 200 and a["id"] in page.text
    import re

    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf
    r = await client.post("/console/approvals/decide", content=urlencode(
        {"csrf": csrf.group(1), "id": a["id"], "decision": "approve"}),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and "approved" in r.headers["location"]
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(user_key))).json()
    assert done["decided_via"] == "console" and done["outcome"] == "executed"


async def test_another_tenants_idempotency_key_neither_blocks_nor_leaks(
    client: httpx.AsyncClient, services: Services, admin_key: str, actions: ActionLog
) -> None:
    globex = services.keys.create("globex").secret  # tenant keys without an agent
    acme = services.keys.create("acme").secret
    g = await propose(client, globex, risk_level="low", amount=5.0,
                      arguments={"to": "GLOBEX-SECRET-ORDER", "cents": 500},
                      idempotency_key="order-42")
    assert g["status"] == "auto_approved"
    g = (await client.get(f"/v1/approvals/{g['id']}?wait=10", headers=H(globex))).json()
    assert g["outcome"] == "executed"
    a = await propose(client, acme, arguments={"to": "acme-o9", "cents": 5000},
                      idempotency_key="order-42")
    assert a["status"] == "pending"
    r = await client.post(f"/v1/approvals/{a['id']}/decision", json={"decision": "approve"},
                          headers=H(admin_key))
    assert r.status_code == 200, r.text
    done = (await client.get(f"/v1/approvals/{a['id']}?wait=10", headers=H(acme))).json()
    # acme's own refund ran, and acme never sees globex's order
    assert done["outcome"] == "executed" and done["result"] == {"paid": "acme-o9"}
    assert "GLOBEX" not in str(done)
    assert sorted(orjson.loads(run[2])["to"] for run in actions.runs()) == [
        "GLOBEX-SECRET-ORDER", "acme-o9"]
    trail = (await client.get(f"/v1/approvals/{a['id']}/audit", headers=H(admin_key))).json()
    assert not any("already executed" in (t["detail"] or "") for t in trail["data"])


async def test_reusing_an_idempotency_key_for_another_request_is_refused(
    client: httpx.AsyncClient, services: Services, actions: ActionLog
) -> None:
    acme = services.keys.create("acme").secret
    first = await propose(client, acme, risk_level="low", amount=5.0,
                          arguments={"to": "acme", "cents": 500}, idempotency_key="k-1")
    assert (await client.get(f"/v1/approvals/{first['id']}?wait=10", headers=H(acme))
            ).json()["outcome"] == "executed"
    for changed in ({"arguments": {"to": "acme", "cents": 99999}},
                    {"action": "other_action"}):
        body = {"action": "pay", "arguments": {"to": "acme", "cents": 500},
                "risk_level": "low", "amount": 5.0, "idempotency_key": "k-1", **changed}
        r = await client.post("/v1/approvals", json=body, headers=H(acme))
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["param"] == "idempotency_key" and "already used" in err["message"]
        assert first["id"] in err["message"]
    # the same request again is a retry: it does not run twice and reports the first run
    again = await propose(client, acme, risk_level="low", amount=5.0,
                          arguments={"to": "acme", "cents": 500}, idempotency_key="k-1")
    done = (await client.get(f"/v1/approvals/{again['id']}?wait=10", headers=H(acme))).json()
    assert done["outcome"] == "executed" and done["result"] == {"paid": "acme"}
    assert len(actions.runs()) == 1
