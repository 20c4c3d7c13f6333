"""``keel mode``: show, override and release the degradation level; the flip audit log."""

from __future__ import annotations

import asyncio
import getpass
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError
from keel.storage.private_files import private_dir

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PIN_S = 30 * 86400


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise typer.BadParameter(f"{text!r}: use a number and a unit, e.g. 90s, 30m, 2h, 1d")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not 0 < seconds <= MAX_PIN_S:  # what the HTTP API accepts too
        raise typer.BadParameter(f"{text!r}: a pin lasts more than 0 s and at most 30d; "
                                 "omit --for to pin until `keel mode auto`")
    return seconds


def _run(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from keel.app import open_database
    from keel.degrade.service import Degrader
    from keel.storage.kv import open_kv

    if not settings.degrade.active:
        fail("the degradation ladder is turned off: set enabled = true under degrade in "
             "keel.toml")

    async def go() -> T:
        private_dir(settings.data_dir)
        db = open_database(settings)
        kv = open_kv(settings.kv)
        try:
            dg = Degrader(kv, db, settings.degrade, settings.model_table())
            await dg.flags.load()
            return await fn(dg)
        finally:
            await kv.aclose()
            db.dispose()

    try:
        return asyncio.run(go())
    except KeelError as exc:
        fail(exc.message)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("show")
    def show(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
        """The current mode, any override, and the alarm values now."""
        settings = settings_from(ctx)

        async def go(dg: Any) -> Any:
            # the service's own alarms: a ladder set at run time may bring alarms keel.toml
            # does not have
            dg.breaker.values = await dg.breaker.compute(time.time())
            return dg.status()

        status = _run(settings, go)
        if as_json:
            typer.echo(json.dumps(status))
            return
        console.print(styled("mode: ", (str(status["mode"]), "bold"),
                             f" (ladder: {' -> '.join(status['levels'])})"))
        if status["override"]:
            ov = status["override"]
            until = "until `keel mode auto`" if ov["until"] is None else \
                time.strftime("until %H:%M:%S", time.localtime(ov["until"]))
            console.print(f"override: {ov['mode']} {until} by {ov['actor']}")
        for tenant, level in sorted(status.get("tenants", {}).items()):
            console.print(f"tenant {tenant}: {level} (its own breaker)")
        table = new_table("alarm", "scope", "value", "threshold", "recover below")
        for a in status["alarms"]:
            for scope, value in sorted(a["values"].items()) or [("*", 0.0)]:
                table.add_row(a["name"], scope, f"{value:.4g}", f"{a['threshold']:g}",
                              f"{a['recover_below']:g}")
        console.print(table)

    @app.command("set")
    def set_cmd(
        ctx: typer.Context,
        mode: str = typer.Argument(..., help="A level name (default ladder: deep, shallow)."),
        duration: str | None = typer.Option(None, "--for", help="e.g. 30m, 2h; default: "
                                            "until `keel mode auto`."),
    ) -> None:
        """Pin every replica to MODE (within a second), overriding the breaker."""
        settings = settings_from(ctx)
        seconds = parse_duration(duration) if duration else None

        async def go(dg: Any) -> Any:
            return await dg.set_mode(mode, seconds, _actor())

        ov = _run(settings, go)
        until = "until `keel mode auto`" if ov.until is None else f"for {duration}"
        console.print(styled("mode pinned to ", (mode.upper(), "bold"), f" {until}"))

    @app.command("auto")
    def auto(ctx: typer.Context) -> None:
        """Drop the override: the breaker chooses the level again."""
        settings = settings_from(ctx)

        async def go(dg: Any) -> Any:
            await dg.set_auto(_actor())
            return dg.flags.level.name

        console.print(styled("automatic mode; now ", (str(_run(settings, go)), "bold")))

    @app.command("log")
    def log_cmd(ctx: typer.Context, limit: int = typer.Option(20, "--limit", "-n", min=1),
                as_json: bool = typer.Option(False, "--json")) -> None:
        """The audit log of level flips (newest first)."""
        from keel.degrade import audit

        settings = settings_from(ctx)

        async def go(dg: Any) -> Any:
            return await dg.db.run(lambda c: audit.recent(c, limit))

        flips = _run(settings, go)
        if as_json:
            typer.echo(json.dumps([f.__dict__ for f in flips]))
            return
        table = new_table("time", "scope", "from", "to", "reason", "actor")
        for f in flips:
            table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.ts)), f.scope,
                          f.from_level, f.to_level, f.reason, f.actor)
        console.print(table)

    return app
