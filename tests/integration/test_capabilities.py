"""Capabilities plug in through one interface: each one on or off, and one from outside.

Each built-in capability is turned off in turn (everything else on, wallets and the
ladder included): the app must start, serve, and shut down with no task left running;
the capability's routes, stages, console page and CLI group must exist only while it is
on. A capability from another package is loaded through the ``keel.capabilities``
entry-point group and gets its settings, migration, stage, route, page and CLI group.
"""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main
from typer.testing import CliRunner

from conftest import MODELS_DIR
from keel import capabilities
from keel.app import build_services, create_app
from keel.cli.main import build as build_cli
from keel.components import CapabilityUnavailable
from keel.config import Settings, load_settings
from keel.errors import ConfigError

KEY = "test-wallet-key-material-0123456789abcdef"
LEVELS = [{"name": "deep", "models": {}}, {"name": "shallow", "max_tokens": 64}]

# what each built-in capability adds: routes (probed with GET), stage names, nav entries,
# CLI groups (present while installed)
EXPECTED: dict[str, dict[str, list[str]]] = {
    "firewall": {"routes": ["/v1/admin/firewall/bans"], "stages": ["firewall"],
                 "nav": ["/console/firewall"], "cli": ["firewall"]},
    "rag": {"routes": [], "stages": ["rag"], "nav": [], "cli": ["rag"]},
    "cache": {"routes": ["/v1/admin/cache/stats"], "stages": ["cache"], "nav": ["/console/cache"],
              "cli": ["cache"]},
    "degrade": {"routes": ["/v1/admin/degrade"], "stages": ["degrade"], "nav": ["/console/mode"],
                "cli": ["mode"]},
    "tools": {"routes": ["/mcp", "/v1/tools"], "stages": [], "nav": ["/console/tools"],
              "cli": ["policy", "tools"]},
    "wallets": {"routes": ["/v1/wallet"], "stages": [],
                "nav": ["/console/wallets"], "cli": ["wallet", "x402"]},
    "approvals": {"routes": ["/v1/approvals", "/v1/workflows"], "stages": [],
                  "nav": ["/console/approvals", "/console/workflows"],
                  "cli": ["approvals", "workflows"]},
    "batch": {"routes": ["/v1/batches", "/v1/files"], "stages": [],
              "nav": ["/console/batches"], "cli": ["batch"]},
    "hive": {"routes": ["/v1/hive/tasks"], "stages": ["hive"], "nav": ["/console/hive"],
             "cli": ["hive"]},
    "remediation": {"routes": ["/v1/remediation/incidents"], "stages": [],
                    "nav": ["/console/remediation"], "cli": ["remediation"]},
    "tuning": {"routes": ["/v1/feedback", "/v1/admin/tuning/versions"], "stages": ["tuning"],
               "nav": [], "cli": ["feedback", "train"]},
    "qa": {"routes": [], "stages": [], "nav": ["/console/qa"], "cli": ["qa"]},
    "reasoning": {"routes": ["/v1/reasoning/runs"], "stages": ["reasoning"],
                  "nav": ["/console/reasoning"], "cli": ["reason"]},
}


def settings_with(tmp_path: Path, off: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"), "models_dir": MODELS_DIR,
        "wallets": {"enabled": True, "encryption_key": KEY},
        "degrade": {"levels": LEVELS},
        "batch": {"enabled": True},
        "hive": {"enabled": True},
        "remediation": {"enabled": True},
        "tuning": {"enabled": True},
        "qa": {"enabled": True},
    }
    if off != "reasoning":  # on when a recipe is configured
        kw["reasoners"] = [{"name": "quick", "workers": ["gemma-3-270m"]}]
    if off == "reasoning":
        pass
    elif off == "degrade":
        kw["degrade"] = {"enabled": False, "levels": LEVELS}
    elif off is not None:
        kw.setdefault(off, {})
        kw[off] = {**kw[off], "enabled": False}
    return kw


async def leftover_tasks() -> set[asyncio.Task[Any]]:
    await asyncio.sleep(0)
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


@pytest.mark.parametrize("off", [None, *EXPECTED])
async def test_each_capability_on_or_off(off: str | None, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    kw = settings_with(tmp_path, off)
    settings = load_settings(None, **kw)
    before = await leftover_tasks()
    svc = build_services(settings)
    app = create_app(settings, services=svc)
    enabled = {c.name for c in svc.capabilities}
    assert enabled == set(EXPECTED) - {off}
    stage_names = [s.name for s in svc.pipeline.stages]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            admin = svc.keys.create("acme", admin=True).secret
            login = await c.post("/console/login", data={"api_key": admin})
            assert login.status_code == 303
            overview = await c.get("/console")
            assert overview.status_code == 200
            health = await c.get("/healthz")
            assert health.status_code == 200
            for name, parts in EXPECTED.items():
                on = name != off
                for path in parts["routes"]:
                    r = await c.get(path, headers={"authorization": f"Bearer {admin}"})
                    # off: a 404 that names the capability and how to turn it on
                    missing = r.status_code == 404 and f"the {name} capability, which is " \
                        "off" in r.text
                    assert missing is not on, (name, path, r.status_code, r.text[:200])
                for stage in parts["stages"]:
                    assert (stage in stage_names) is on, (name, stage)
                for page in parts["nav"]:
                    assert (f'href="{page}"' in overview.text) is on, (name, page)
                    r = await c.get(page)
                    assert r.status_code == (200 if on else 404), (name, page, r.text[:200])
    # shutdown stops everything the capabilities started
    assert await leftover_tasks() <= before
    # every installed capability's CLI group is there, on or off: the commands manage
    # state offline (a wallet is created before payments are turned on)
    groups = typer.main.get_command(build_cli()).commands  # type: ignore[attr-defined]
    assert {g for parts in EXPECTED.values() for g in parts["cli"]} <= set(groups)


def test_components_say_which_capability_is_off(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from keel.cache.stage import CacheStage
    from keel.wallets.service import WalletService

    monkeypatch.chdir(tmp_path)
    svc = build_services(load_settings(None, **settings_with(tmp_path, "wallets")))
    assert svc.find(WalletService) is None
    assert isinstance(svc.get(CacheStage), CacheStage)
    with pytest.raises(CapabilityUnavailable, match=r"wallets is disabled: .*\[wallets\]"):
        svc.get(WalletService)
    svc.db.dispose()


# -- a capability from another package, through the entry-point group --------------------

PLUGIN = '''
from collections.abc import Sequence
from typing import Any

import typer
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, text

from keel.capability import (
    BuildContext, Capability, CliGroup, DoctorCheck, PageFactory, Slot, StageSlot,
)
from keel.storage.migrations import Migration
from keel.web.shell import NavItem

EVENTS: list[str] = []


class HelloSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = "hello"


class Tag:
    name = "hello-tag"

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def __call__(self, ctx: Any, call_next: Any) -> None:
        EVENTS.append("stage")
        await call_next(ctx)


class Page:
    nav = NavItem("/console/hello", "Hello")

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def register(self, r: APIRouter) -> None:
        async def page() -> Any:
            from starlette.responses import HTMLResponse
            return HTMLResponse("hello page")
        r.add_api_route("/console/hello", page, methods=["GET"])


def _create(conn: Connection) -> None:
    conn.execute(text("CREATE TABLE hello_greetings (id INTEGER PRIMARY KEY)"))


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.command("say")
    def say() -> None:
        typer.echo("hello from a plugin")

    @app.command("list")
    def list_() -> None:
        typer.echo("nothing")

    return app


class Hello(Capability):
    name = "hello"
    uses = ("cache",)

    @classmethod
    def enabled(cls, settings: Any) -> bool:
        return "hello" in settings.plugins

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        return [Migration("hello/0001_greetings", _create)]

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        return [CliGroup("hello", _cli, "Say hello.")]

    @classmethod
    def doctor_checks(cls, settings: Any) -> Sequence[DoctorCheck]:
        return [DoctorCheck("hello", True, lambda: "greets")]

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.settings = self.plugin_settings(ctx.settings, HelloSettings)
        self.tag = Tag(self.settings.greeting)
        ctx.components.put(self.tag, owner=self.name)

    def stages(self) -> Sequence[StageSlot]:
        return [StageSlot(self.tag, Slot.EDGE - 1)]

    def install(self, app: FastAPI, svc: Any) -> None:
        async def hello() -> dict[str, str]:
            return {"greeting": self.settings.greeting}
        app.add_api_route("/v1/hello", hello, methods=["GET"])

    def console_pages(self) -> Sequence[PageFactory]:
        return [Page]

    async def start(self) -> None:
        EVENTS.append("start")

    async def stop(self) -> None:
        EVENTS.append("stop")
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    site = tmp_path / "site"
    (site / "keel_hello").mkdir(parents=True)
    (site / "keel_hello" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "keel_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: keel-hello\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[keel.capabilities]\nhello = keel_hello:Hello\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    import importlib

    importlib.invalidate_caches()
    mod = importlib.import_module("keel_hello")
    yield mod
    import sys

    sys.modules.pop("keel_hello", None)


async def test_a_capability_from_another_package_plugs_in(plugin: Any, tmp_path: Path) -> None:
    assert "hello" in [c.name for c in capabilities.plugins()]
    settings = load_settings(None, data_dir=str(tmp_path / "data"), models_dir=MODELS_DIR,
                             plugins={"hello": {"greeting": "bonjour"}},
                             auth_required=False)
    svc = build_services(settings)
    app = create_app(settings, services=svc)
    names = [c.name for c in svc.capabilities]
    assert names.index("hello") > names.index("cache")  # built after what it uses
    assert svc.pipeline.stages[0].name == "hello-tag"  # its slot: first
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://keel") as c:
            assert (await c.get("/v1/hello")).json() == {"greeting": "bonjour"}
            assert "/console/hello" in (await c.get("/console")).text
            assert (await c.get("/console/hello")).text == "hello page"
            r = await c.post("/v1/embeddings", json={"model": "all-minilm-l6-v2",
                                                     "input": "x"})
            assert r.status_code == 200
            assert plugin.EVENTS.count("stage") == 1
    assert plugin.EVENTS[0] == "start" and plugin.EVENTS[-1] == "stop"
    db_file = settings.data_dir / "keel.db"
    with sqlite3.connect(db_file) as conn:  # its migration ran with the core's
        conn.execute("SELECT * FROM hello_greetings")
    # its CLI group, and its doctor check
    cfg = tmp_path / "keel.toml"
    cfg.write_text(f'data_dir = "{settings.data_dir}"\nmodels_dir = "{MODELS_DIR}"\n'
                   '[plugins.hello]\ngreeting = "hi"\n')
    runner = CliRunner(env={"COLUMNS": "250"})
    res = runner.invoke(build_cli(), ["--config", str(cfg), "hello", "say"])
    assert res.exit_code == 0 and "hello from a plugin" in res.output, res.output


def test_plugin_settings_are_validated(plugin: Any, tmp_path: Path) -> None:
    bad = load_settings(None, data_dir=str(tmp_path / "d"), models_dir=MODELS_DIR,
                        plugins={"hello": {"greting": "typo"}})
    with pytest.raises(ConfigError, match=r"\[plugins.hello\].*greting"):
        build_services(bad)
    unknown = load_settings(None, data_dir=str(tmp_path / "d"), models_dir=MODELS_DIR,
                            plugins={"nosuch": {}})
    with pytest.raises(ConfigError, match="not installed"):
        build_services(unknown)


def test_order_follows_dependencies_and_refuses_cycles() -> None:
    from keel.capability import Capability

    class A(Capability):
        name = "a"
        uses = ("b",)

    class B(Capability):
        name = "b"

    class C(Capability):
        name = "c"
        requires = ("d",)

    class D(Capability):
        name = "d"
        uses = ("c",)

    assert [c.name for c in capabilities.ordered([A, B])] == ["b", "a"]
    with pytest.raises(ConfigError, match="cycle"):
        capabilities.ordered([C, D])


def test_a_required_capability_that_is_off_stops_start_up(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from keel.capability import Capability

    class NeedsWallets(Capability):
        name = "needs-wallets"
        requires = ("wallets",)

    monkeypatch.chdir(tmp_path)
    s: Settings = load_settings(None, data_dir=str(tmp_path / "d"), models_dir=MODELS_DIR)
    with pytest.raises(ConfigError, match="needs wallets"):
        build_services(s, capabilities=[NeedsWallets])
