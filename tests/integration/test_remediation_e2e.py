"""The checkout incident through keel end to end: real service processes, real HTTP, real
git, real SQLite clones, the real sandbox, real DBOS approvals. The fix comes from a
scripted fixer (these tests are about keel's orchestration) except in the local-model test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from approval_helpers import Receiver
from conftest import make_settings
from keel.app import build_services, create_app
from keel.gateway.background import serving
from keel.remediation.fixer import ScriptedFixer
from keel.remediation.remediator import Remediator

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "checkout"
sys.path.insert(0, str(EXAMPLE))

import demo  # noqa: E402
from traffic import run as traffic  # noqa: E402


@pytest.fixture
def world(tmp_path: Path) -> Iterator[demo.World]:
    w = demo.build_world(tmp_path / "world")
    yield w
    w.stop()


@pytest.fixture
def pager() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def settings_for(tmp_path: Path, world: demo.World, pager: Receiver, **kw: Any) -> Any:
    rem = {"enabled": True, "services": [world.spec()], "canary_s": 2.0,
           "canary_weight": 0.1, "canary_min_requests": 3, "page_webhook_url": pager.url,
           "approval_timeout_s": 120, "sandbox_timeout_s": 90, **kw}
    return make_settings(tmp_path, remediation=rem)


async def wait_for(c: httpx.AsyncClient, pred: Any, timeout_s: float = 120) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        for inc in (await c.get("/v1/remediation/incidents")).json()["data"]:
            if pred(inc):
                return (await c.get(f"/v1/remediation/incidents/{inc['id']}")).json()
        if asyncio.get_running_loop().time() > deadline:
            incs = (await c.get("/v1/remediation/incidents")).json()["data"]
            raise AssertionError(f"timed out; incidents: {incs}")
        await asyncio.sleep(0.2)


def steps(inc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["step"], s["status"]) for s in inc["steps"]]


BAD_CANARY_FIX = {
    **demo.SCRIPTED_FIX,
    "patch": demo.SCRIPTED_FIX["patch"].replace(
        "+        subtotal -= min(d[\"amount_off_cents\"] or 0, subtotal)\n",
        "+        subtotal -= min(d[\"amount_off_cents\"] or 0, subtotal)\n"
        "+        assert all(qty < 3 for _, qty in items), \"no bulk discounts\"\n",
    ).replace("+32,5", "+32,6"),
}


async def test_scripted_fixer_detected_canaried_approved_and_committed(
        tmp_path: Path, world: demo.World, pager: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings_for(tmp_path, world, pager)
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    svc.get(Remediator).steps.fixer = ScriptedFixer(demo.SCRIPTED_FIX)
    app = create_app(s, services=svc)
    with serving(app) as base:
        counts: Counter[str] = Counter()
        job = asyncio.create_task(traffic(f"{base}/svc/checkout", 60, 300, 0.15, 3, counts))
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30, headers={
                    "authorization": f"Bearer {admin}"}) as c:
                inc = await wait_for(c, lambda i: i["status"] == "awaiting_approval")
                assert inc["trigger"] == "detector"
                ev = inc["evidence"]
                assert "TypeError" in ev["stack_trace"] and "pricing.py" in ev["stack_trace"]
                assert "amount_off_cents" in ev["diff_since_good"]
                assert "Fixed-amount discount codes" in ev["commits_since_good"]
                assert "discounts" in ev["schema"]
                assert ev["failing_requests"] and "discount_code" in \
                    ev["failing_requests"][0]["request_body"]
                assert steps(inc)[:7] == [
                    ("clone", "ok"), ("propose", "ok"), ("apply", "ok"), ("test", "ok"),
                    ("deploy", "ok"), ("canary", "ok"), ("request_approval", "ok")]
                test = next(x for x in inc["steps"] if x["step"] == "test")["output"]
                assert test["patched"]["passed"] and not test["unpatched_new_test"]["passed"]
                assert "netns:unshare-rn" in test["patched"]["isolation"] or \
                    "audit-hook:network+processes" in test["patched"]["isolation"]
                pend = (await c.get("/v1/approvals?status=pending")).json()["data"]
                assert len(pend) == 1 and "Root cause" in pend[0]["reason"]
                r = await c.post(f"/v1/approvals/{pend[0]['id']}/decision",
                                 json={"decision": "approve"})
                assert r.status_code == 200, r.text
                done = await wait_for(c, lambda i: i["id"] == inc["id"] and
                                      i["status"] == "resolved")
                assert done["outcome"]["result"] == "shipped"
                t = done["outcome"]["timeline"]
                assert t["detected"] <= 10, t  # seconds after the first 5xx
                versions = (await c.get("/v1/remediation/services")).json()["data"][0]
                assert [(v["role"], v["weight"]) for v in versions["versions"]] == \
                    [("stable", 1.0)]
                assert versions["versions"][0]["name"].startswith("candidate-")
                # every cart works now, percentage codes included
                for code in ("SAVE10", "SAVE20", "FIVEOFF"):
                    r = await c.post("/svc/checkout/checkout", json={
                        "items": [{"sku": "sku-2", "qty": 1}], "discount_code": code})
                    assert r.status_code == 200, r.text
                    assert r.headers["x-keel-version"].startswith("candidate-")
        finally:
            job.cancel()
    branch = f"keel/remediation/{inc['id']}"
    log = subprocess.run(["git", "-C", str(world.repo), "log", "-1", "--format=%s", branch],
                         capture_output=True, text=True, check=True).stdout
    assert "NULL amount_off_cents" in log
    assert not pager.posts  # nobody paged: the fix shipped


async def test_bad_canary_rolls_back_and_pages(
        tmp_path: Path, world: demo.World, pager: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fix that passes the tests but fails live traffic: the canary rolls back."""
    monkeypatch.chdir(tmp_path)
    s = settings_for(tmp_path, world, pager, canary_s=20.0)
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    rm = svc.get(Remediator)
    rm.steps.fixer = ScriptedFixer(BAD_CANARY_FIX)
    app = create_app(s, services=svc)
    with serving(app) as base:
        job = asyncio.create_task(traffic(f"{base}/svc/checkout", 60, 300, 0.5, 5))
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30, headers={
                    "authorization": f"Bearer {admin}"}) as c:
                r = await c.post("/v1/remediation/incidents", json={"service": "checkout"})
                assert r.status_code == 201
                inc = await wait_for(c, lambda i: i["status"] == "failed")
                canary = next((x for x in inc["steps"] if x["step"] == "canary"), None)
                assert canary is not None, inc["outcome"]
                assert canary["status"] == "failed"
                assert "rolled back" in canary["output"]["error"]
                assert canary["output"]["rollback_s"] < 1.0
                assert canary["output"]["seconds"] < 20  # stopped at the first bad sign
                versions = (await c.get("/v1/remediation/services")).json()["data"][0]
                assert [(v["name"], v["weight"]) for v in versions["versions"]] == \
                    [("production", 1.0)]
                assert not rm.deployer.running
        finally:
            job.cancel()
    pages = pager.json()
    assert len(pages) == 1 and "canary rolled back" in pages[0]["reason"]
    assert any(st["step"] == "canary" for st in pages[0]["steps"])
    branches = subprocess.run(["git", "-C", str(world.repo), "branch", "--list",
                               "keel/remediation/*"], capture_output=True, text=True).stdout
    assert not branches.strip()  # nothing left behind


@pytest.mark.parametrize("fix,expect", [
    ({**demo.SCRIPTED_FIX, "patch": demo.SCRIPTED_FIX["patch"].replace(
        "checkout/pricing.py", "../outside/pricing.py")}, "only relative paths"),
    ({**demo.SCRIPTED_FIX, "patch": demo.SCRIPTED_FIX["patch"].replace(
        "checkout/pricing.py", "deploy/secrets.py")}, "outside the service's paths"),
    ({**demo.SCRIPTED_FIX, "test_code": demo.SCRIPTED_FIX["test_code"] +
      "\n\ndef test_calls_home():\n    import socket\n"
      "    socket.create_connection(('203.0.113.9', 443), timeout=2)\n"},
     "tests fail with the patch"),
    ({**demo.SCRIPTED_FIX, "test_code": "def test_nothing():\n    assert True\n"},
     "does not reproduce"),
], ids=["path-escape", "outside-service", "test-uses-network", "test-proves-nothing"])
async def test_unsafe_fixes_end_safely_with_a_page(
        tmp_path: Path, world: demo.World, pager: Receiver, monkeypatch: pytest.MonkeyPatch,
        fix: dict[str, Any], expect: str) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings_for(tmp_path, world, pager)
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    rm = svc.get(Remediator)
    rm.steps.fixer = ScriptedFixer(fix)
    app = create_app(s, services=svc)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://keel",
            headers={"authorization": f"Bearer {admin}"}) as c:
        r = await c.post("/v1/remediation/incidents", json={"service": "checkout"})
        assert r.status_code == 201, r.text
        done = await rm.wait(r.json()["id"], 120)
        assert done.status == "failed", done
        assert expect in done.outcome["reason"], done.outcome
        inc = (await c.get(f"/v1/remediation/incidents/{done.id}")).json()
        assert ("deploy", "ok") not in steps(inc)
        assert steps(inc)[-1] == ("page", "ok")
        versions = (await c.get("/v1/remediation/services")).json()["data"][0]["versions"]
        assert [(v["name"], v["weight"]) for v in versions] == [("production", 1.0)]
    assert len(pager.json()) == 1
    assert not list((tmp_path / "data" / "remediation" / "clones").glob("*.db"))


async def test_remediation_proposed_test_cannot_touch_production_files(
        tmp_path: Path, world: demo.World, pager: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's attack: the scripted fix, but its test reads keel's data (the admin
    key, keel.db) and writes a table into the production SQLite file instead of the
    clone. The run must fail safely and production must be untouched."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    s = settings_for(tmp_path, world, pager)
    prod = Path(world.db_url.removeprefix("sqlite:///"))
    data = Path(s.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    (data / "admin.key").write_text("keel-admin-secret")
    attack = (
        "\n\ndef test_zz_reaches_production():\n"
        "    import sqlite3\n"
        f"    print(open({str(data / 'admin.key')!r}).read())\n"
        f"    print(open({str(data / 'keel.db')!r}, 'rb').read(16))\n"
        f"    c = sqlite3.connect({str(prod)!r})\n"
        "    c.execute('CREATE TABLE IF NOT EXISTS pwned (x)')\n"
        "    c.execute('INSERT INTO pwned VALUES (1)')\n"
        "    c.commit()\n")
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    rm = svc.get(Remediator)
    rm.steps.fixer = ScriptedFixer({**demo.SCRIPTED_FIX,
                                    "test_code": demo.SCRIPTED_FIX["test_code"] + attack})
    app = create_app(s, services=svc)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://keel",
            headers={"authorization": f"Bearer {admin}"}) as c:
        r = await c.post("/v1/remediation/incidents", json={"service": "checkout"})
        assert r.status_code == 201, r.text
        done = await rm.wait(r.json()["id"], 120)
        assert done.status == "failed", done
        assert "tests fail with the patch" in done.outcome["reason"], done.outcome
        inc = (await c.get(f"/v1/remediation/incidents/{done.id}")).json()
        test_step = next(st for st in inc["steps"] if st["step"] == "test")
        tail = str(test_step)
        assert "keel-admin-secret" not in tail
        assert any(layer.startswith("mountns:") for layer in
                   test_step["output"]["patched"]["isolation"]), test_step
    db = sqlite3.connect(prod)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master")]
    finally:
        db.close()
    assert "pwned" not in tables
    assert (data / "admin.key").read_text() == "keel-admin-secret"


async def test_local_model_runs_end_to_end_and_fails_safely(
        tmp_path: Path, world: demo.World, pager: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real local model (Gemma 3 270M) is asked for the fix through keel's pipeline.
    It cannot write a working patch; the run must end with production untouched, the
    model call metered, and a page carrying the evidence."""
    monkeypatch.chdir(tmp_path)
    s = settings_for(tmp_path, world, pager, max_tokens=96, max_prompt_chars=2500)
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    app = create_app(s, services=svc)
    rm = svc.get(Remediator)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://keel", timeout=300,
            headers={"authorization": f"Bearer {admin}"}) as c:
        for _ in range(3):  # some real failures for the evidence
            await c.post("/svc/checkout/checkout", json={
                "items": [{"sku": "sku-1", "qty": 1}], "discount_code": "SAVE10"})
        r = await c.post("/v1/remediation/incidents", json={"service": "checkout",
                                                           "reason": "5xx on checkout"})
        assert r.status_code == 201, r.text
        done = await rm.wait(r.json()["id"], 600)
        assert done.status == "failed", done
        inc = (await c.get(f"/v1/remediation/incidents/{done.id}")).json()
        names = [st["step"] for st in inc["steps"]]
        assert names[:2] == ["clone", "propose"]
        propose = inc["steps"][1]
        assert propose["input"] == {"service": "checkout"}
        print("local model proposal:", propose["status"], propose["output"])
        if propose["status"] == "ok":  # valid JSON: then the patch itself must be refused
            assert propose["output"]["model"] == "gemma-3-270m"
            assert propose["cost_usd"] > 0
            assert ("deploy", "ok") not in steps(inc)
        else:
            assert propose["output"]["code"] in ("fix_unusable", "context_length_exceeded")
        assert steps(inc)[-1] == ("page", "ok")
        versions = (await c.get("/v1/remediation/services")).json()["data"][0]["versions"]
        assert [(v["name"], v["weight"]) for v in versions] == [("production", 1.0)]
        logged = (await c.get("/v1/requests?limit=5")).status_code
        assert logged in (200, 404)
    pages = pager.json()
    assert len(pages) == 1 and pages[0]["incident"]["evidence"]["stack_trace"]
