"""Remediation's HTTP surface and its bad input: unknown services, malformed alerts,
Alertmanager webhooks, one incident at a time per service, admin-only controls."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import make_settings
from keel.app import build_services, create_app
from keel.remediation.fixer import Proposed, ScriptedFixer
from keel.remediation.remediator import Remediator

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "checkout"))

import demo


class HeldScriptedFixer(ScriptedFixer):
    """A scripted fixer that holds the run at the propose step until released, so a test
    can send more alerts while an incident is active."""

    def __init__(self) -> None:
        super().__init__(demo.SCRIPTED_FIX)
        self.release = asyncio.Event()

    async def propose(self, evidence: dict[str, Any], context: dict[str, Any]) -> Proposed:
        await self.release.wait()
        raise RuntimeError("released: end this run")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[demo.World]:
    w = demo.build_world(tmp_path / "world")
    yield w
    w.stop()


@pytest.fixture
async def api(tmp_path: Path, world: demo.World, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[httpx.AsyncClient, Remediator, HeldScriptedFixer, str]]:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, remediation={"enabled": True, "services": [world.spec()]})
    svc = build_services(s)
    admin = svc.keys.create("ops", admin=True).secret
    user = svc.keys.create("ops", agent="bot").secret
    rm = svc.get(Remediator)
    fixer = HeldScriptedFixer()
    rm.steps.fixer = fixer
    app = create_app(s, services=svc)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=transport, base_url="http://keel",
            headers={"authorization": f"Bearer {admin}"}) as c:
        yield c, rm, fixer, user
        fixer.release.set()


def alert(service: str, status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "status": status, "receiver": "keel", "alerts": [{
        "status": status, "labels": {"alertname": "High5xx", "service": service},
        "annotations": {"summary": "5xx above 5%"}, "startsAt": "2026-01-05T02:00:00Z"}]}


async def test_unknown_service_is_a_clear_404_everywhere(api: Any) -> None:
    c, _rm, _, _ = api
    for r in (await c.post("/v1/remediation/alerts", json=alert("billing")),
              await c.post("/v1/remediation/incidents", json={"service": "billing"}),
              await c.get("/svc/billing/checkout"),
              await c.put("/v1/remediation/services/billing/weights",
                          json={"weights": {"production": 1}})):
        assert r.status_code == 404, r.text
        assert "unknown service 'billing'" in r.json()["error"]["message"]
    assert (await c.get("/v1/remediation/incidents")).json()["data"] == []


@pytest.mark.parametrize("body,param", [
    ({"alerts": "x"}, "alerts"), ({"alerts": [{"labels": "x"}]}, "alerts[0]"),
    ({"alerts": [{"labels": {"alertname": "x"}}]}, "alerts[0].labels.service"),
])
async def test_malformed_alerts_are_400(api: Any, body: dict[str, Any], param: str) -> None:
    c, _, _, _ = api
    r = await c.post("/v1/remediation/alerts", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


async def test_controls_need_an_admin_key_but_the_proxy_does_not(api: Any) -> None:
    c, _, _, user = api
    h = {"authorization": f"Bearer {user}"}
    assert (await c.post("/v1/remediation/alerts", json=alert("checkout"),
                         headers=h)).status_code == 403
    assert (await c.get("/v1/remediation/incidents", headers={"authorization": ""})
            ).status_code == 401
    r = await c.post("/svc/checkout/checkout", json={"items": [{"sku": "sku-1", "qty": 1}]},
                     headers={"authorization": ""})
    assert r.status_code == 200 and r.headers["x-keel-version"] == "production"
    r = await c.post("/svc/checkout/checkout", json={"items": []})
    assert r.status_code == 400  # the service's own 4xx passes through untouched


async def test_alertmanager_opens_one_incident_and_later_alerts_attach(api: Any) -> None:
    c, rm, fixer, _ = api
    r = await c.post("/v1/remediation/alerts", json=alert("checkout"))
    assert r.status_code == 202
    first = r.json()["data"][0]
    assert first["created"] is True
    # concurrent alerts and a manual incident for the same service: attached, no new run
    rs = await asyncio.gather(*[c.post("/v1/remediation/alerts", json=alert("checkout"))
                                for _ in range(3)],
                              c.post("/v1/remediation/incidents", json={"service": "checkout"}))
    assert all(x.status_code in (200, 202) for x in rs)
    assert {x.json()["data"][0]["incident"] for x in rs[:3]} == {first["incident"]}
    assert rs[3].json()["id"] == first["incident"] and rs[3].json()["created"] is False
    assert (await c.post("/v1/remediation/alerts", json=alert("checkout", "resolved"))
            ).json()["data"] == []
    incs = (await c.get("/v1/remediation/incidents")).json()["data"]
    assert len(incs) == 1 and incs[0]["attached"] == 4 and incs[0]["trigger"] == "alertmanager"
    assert incs[0]["evidence"]["trigger"]["labels"]["alertname"] == "High5xx"
    fixer.release.set()
    done = await rm.wait(first["incident"], 60)
    assert done.status == "failed" and "released" in done.outcome["reason"]
    # the next alert after the run ended is a new incident
    r = await c.post("/v1/remediation/alerts", json=alert("checkout"))
    assert r.json()["data"][0]["created"] is True


async def test_manual_weights_and_bad_values(api: Any) -> None:
    c, _, _, _ = api
    r = await c.put("/v1/remediation/services/checkout/weights",
                    json={"weights": {"production": "all"}})
    assert r.status_code == 400
    r = await c.put("/v1/remediation/services/checkout/weights",
                    json={"weights": {"production": 0}})
    assert r.status_code == 400 and "above 0" in r.json()["error"]["message"]
    r = await c.get("/v1/remediation/services")
    v = r.json()["data"][0]["versions"][0]
    assert v["name"] == "production" and v["weight"] == 1.0


async def test_console_page_lists_services_and_incidents(api: Any) -> None:
    c, rm, fixer, _ = api
    r = await c.post("/v1/remediation/incidents", json={"service": "checkout"})
    fixer.release.set()
    await rm.wait(r.json()["id"], 60)
    login = await c.post("/console/login", data={"api_key": c.headers["authorization"][7:]})
    assert login.status_code in (200, 303)
    page = await c.get("/console/remediation")
    assert page.status_code == 200
    assert "checkout" in page.text and r.json()["id"] in page.text and "clone" in page.text


async def test_cli_lists_and_shows_incidents(api: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from keel.cli.main import build

    c, rm, fixer, _ = api
    r = await c.post("/v1/remediation/incidents", json={"service": "checkout"})
    iid = r.json()["id"]
    fixer.release.set()
    await rm.wait(iid, 60)
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    run = CliRunner(env={"COLUMNS": "250"})
    out = run.invoke(build(), ["--config", str(cfg), "remediation", "list"])
    assert out.exit_code == 0 and iid in out.output and "failed" in out.output
    out = run.invoke(build(), ["--config", str(cfg), "remediation", "show", iid])
    assert out.exit_code == 0 and "clone" in out.output and "propose" in out.output
    out = run.invoke(build(), ["--config", str(cfg), "remediation", "show", "inc_nope"])
    assert out.exit_code == 1 and "no incident" in out.output
