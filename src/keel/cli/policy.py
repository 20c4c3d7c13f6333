"""``keel policy``: validate, apply, roll back, test, draft and shadow Cedar tool policies.

Commands that need the Cedar schema connect to the configured tool servers first (the schema
is generated from their tools' input schemas).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.text import Text

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError
from keel.storage.private_files import private_dir

T = TypeVar("T")


def with_gateway(settings: Settings, fn: Callable[[Any], Awaitable[T]],
                 label: str = "connecting to tool servers") -> T:
    """Run ``fn(gateway)`` with the tool servers connected and the active policy loaded."""
    from keel.app import open_database
    from keel.tools.gateway import ToolGateway
    from keel.x402.policy import policy_actions

    async def run() -> T:
        private_dir(settings.data_dir)
        db = open_database(settings)
        gw = ToolGateway(settings.tools, db)
        gw.extra_actions.extend(policy_actions(settings))  # e.g. x402:pay with wallets on
        try:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                bar.add_task(label, total=None)
                await gw.connect()
            return await fn(gw)
        finally:
            await gw.aclose()
            db.dispose()

    try:
        return asyncio.run(run())
    except KeelError as exc:
        fail(exc.message)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("schema")
    def schema(ctx: typer.Context) -> None:
        """Print the Cedar schema generated from the configured tools."""
        text = with_gateway(settings_from(ctx), lambda gw: _const(gw.authorizer.schema_text))
        console.print(Syntax(text, "rust", theme="ansi_dark"))

    @app.command("validate")
    def validate(ctx: typer.Context, file: Path = typer.Argument(..., help="Cedar file.")) -> None:
        """Check FILE parses and validates against the tool schema (changes nothing)."""
        text = _read(file)

        async def run(gw: Any) -> int:
            return len(gw.authorizer.validate(text).labels)

        n = with_gateway(settings_from(ctx), run)
        console.print(styled(("valid", "green"),
                             f": {n} polic{'y' if n == 1 else 'ies'} in {file}"))

    @app.command("apply")
    def apply(
        ctx: typer.Context, file: Path = typer.Argument(..., help="Cedar file."),
        note: str | None = typer.Option(None, "--note", help="Why (kept with the version)."),
    ) -> None:
        """Validate FILE, store it as a new version and activate it (gateways reload it)."""
        text = _read(file)

        async def run(gw: Any) -> Any:
            return gw.store.apply(text, validate=gw.authorizer.validate, note=note)

        v = with_gateway(settings_from(ctx), run)
        console.print(styled(("applied", "green"),
                             f" policy version {v.version} (sha256 {v.sha256[:12]}); "
                             "`keel policy rollback` restores the previous one"))

    @app.command("rollback")
    def rollback(ctx: typer.Context) -> None:
        """Re-activate the policy version that was active before the current one."""
        from keel.app import open_database
        from keel.policy.store import PolicyStore

        try:
            v = PolicyStore(open_database(settings_from(ctx))).rollback()
        except KeelError as exc:
            fail(exc.message)
        console.print(styled(("rolled back", "yellow"), f" to policy version {v.version}"))

    @app.command("history")
    def history(ctx: typer.Context) -> None:
        """List stored policy versions."""
        from keel.app import open_database
        from keel.policy.store import PolicyStore

        table = new_table("version", "active", "created", "sha256", "note")
        for v in PolicyStore(open_database(settings_from(ctx))).history():
            table.add_row(str(v.version), "yes" if v.active else "",
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at)),
                          v.sha256[:12], v.note or "")
        console.print(table)

    @app.command("test")
    def test(
        ctx: typer.Context, cases: Path = typer.Argument(..., help="YAML/JSON case list."),
        policy: Path | None = typer.Option(None, "--policy", "-p",
                                           help="Cedar file to test (default: the active one)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Run request -> expected decision cases; exit 1 when any case fails."""
        from keel.policy.cases import load_cases, run_cases

        settings = settings_from(ctx)
        text = _read(policy) if policy else None
        try:
            loaded = load_cases(cases)
        except KeelError as exc:
            fail(exc.message)

        async def run(gw: Any) -> Any:
            snap = gw.authorizer.validate(text) if text is not None else gw.authorizer.snapshot
            return run_cases(gw.authorizer, snap, loaded, gw.tz)

        results = with_gateway(settings, run)
        failed = [r for r in results if not r.passed]
        if as_json:
            typer.echo(json.dumps([{"name": r.name, "expect": r.expect,
                                    "got": r.decision.outcome,
                                    "policy_ids": list(r.decision.policy_ids),
                                    "reason": r.decision.reason} for r in results]))
        else:
            table = new_table("case", "expect", "got", "policies", "reason")
            for r in results:
                got = styled((r.decision.outcome, "green" if r.passed else "red"))
                table.add_row(r.name, r.expect, got, ", ".join(r.decision.policy_ids),
                              r.decision.reason)
            console.print(table)
            console.print(f"{len(results) - len(failed)}/{len(results)} cases passed")
        if failed:
            raise typer.Exit(1)

    @app.command("draft")
    def draft(
        ctx: typer.Context,
        request: str = typer.Argument(..., help="The policy in plain English."),
        model: str | None = typer.Option(None, "--model", "-m", help="Chat model to ask."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write the policy here."),
    ) -> None:
        """Draft a Cedar policy from plain English, validated and with examples to review."""
        from keel.policy.draft import PolicyDrafter, model_completer
        from keel.providers.registry import ModelRegistry

        settings = settings_from(ctx)
        name = model or settings.tools.policy.draft_model or settings.default_model

        async def run(gw: Any) -> Any:
            models = ModelRegistry(settings)
            try:
                drafter = PolicyDrafter(gw.authorizer, model_completer(models, name),
                                        repairs=settings.tools.policy.draft_repairs)
                with Progress(SpinnerColumn(), TextColumn("{task.description}"),
                              TimeElapsedColumn(), console=console, transient=True) as bar:
                    bar.add_task(f"asking {name} (up to "
                                 f"{1 + settings.tools.policy.draft_repairs} rounds)", total=None)
                    return await drafter.draft(request)
            finally:
                await models.aclose()

        result = with_gateway(settings, run)
        for i, a in enumerate(result.attempts, 1):
            status = (styled(("valid", "green")) if a.problem is None
                      else styled(("rejected", "red"), f": {a.problem}"))
            console.print(Text(f"attempt {i}: ").append_text(status))
        if not result.ok:
            fail(result.error or "drafting failed")
        console.print(Syntax(result.policy, "rust", theme="ansi_dark"))
        table = new_table("policy", "tool", "field", "value", "decision", "deciding policies")
        for e in result.examples:
            table.add_row(e.policy, e.tool, e.field, json.dumps(e.value), e.decision.outcome,
                          ", ".join(e.decision.policy_ids))
        console.print(table)
        if out:
            out.write_text(result.policy)
            console.print(f"written to {out}; review it, then `keel policy apply {out}`")
        else:
            console.print("Nothing is enforced until `keel policy apply FILE`.")

    @app.command("shadow")
    def shadow_cmd(
        ctx: typer.Context, file: Path = typer.Argument(..., help="Candidate Cedar file."),
        hours: float = typer.Option(24.0, "--hours", help="Replay this many hours of traffic."),
        limit: int = typer.Option(100_000, "--limit"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Replay logged tool decisions against FILE and report every one that would change."""
        from keel.policy.cases import logged_rows, shadow

        text = _read(file)

        async def run(gw: Any) -> Any:
            snap = gw.authorizer.validate(text)
            since = time.time() - hours * 3600
            rows = await gw.db.run(lambda c: logged_rows(c, since, limit))
            return shadow(gw.authorizer, snap, rows)

        report = with_gateway(settings_from(ctx), run)
        if as_json:
            typer.echo(json.dumps({"replayed": report.replayed, "skipped": report.skipped,
                                   "changes": [c.__dict__ for c in report.changes]}))
            return
        table = new_table("decision", "time", "agent", "tool", "before", "after", "now by")
        for c in report.changes:
            table.add_row(c.decision_id, time.strftime("%m-%d %H:%M", time.localtime(c.ts)),
                          c.agent, c.tool, c.before, c.after, ", ".join(c.after_policies))
        console.print(table)
        console.print(f"replayed {report.replayed} decisions ({report.skipped} logged without "
                      f"arguments skipped); {len(report.changes)} would change")

    return app


async def _const(value: T) -> T:
    return value
