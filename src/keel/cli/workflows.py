"""``keel workflows run FILE.asl.json --input JSON``: run an Amazon States Language
definition as a durable DBOS workflow in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import typer

from keel.cli.common import console, err_console, fail, settings_from
from keel.errors import KeelError

CLI_EXECUTOR = "keel-workflows-cli"


async def _run(settings: Any, defn: dict[str, Any], data: Any) -> dict[str, Any]:
    from keel.app import open_database
    from keel.approvals.service import ApprovalsService

    db = open_database(settings)
    svc = ApprovalsService(settings, db, executor_id=CLI_EXECUTOR)
    await svc.ensure_started()
    try:
        handle = await svc.engine.run_asl(defn, data)
        with err_console.status("running (waits for approvals survive restarts)..."):
            result: dict[str, Any] = await handle.get_result()
        return result
    finally:
        await svc.stop()
        db.dispose()


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("run")
    def run(
        ctx: typer.Context,
        file: Path = typer.Argument(..., help="State machine (Amazon States Language JSON)."),
        input_: str = typer.Option("{}", "--input", "-i", help="Execution input (JSON)."),
    ) -> None:
        """Run a state machine: Task, Choice, Pass, Wait, Succeed, Fail, Retry/Catch;
        `.waitForTaskToken` tasks wait durably for `keel approvals approve ID`."""
        from keel.workflows.definition import load

        settings = settings_from(ctx)
        try:
            defn = load(file)
            data = orjson.loads(input_)
        except orjson.JSONDecodeError as exc:
            fail(f"--input is not valid JSON: {exc}")
        except KeelError as exc:
            fail(exc.message)
        try:
            result = asyncio.run(_run(settings, defn, data))
        except KeelError as exc:
            fail(exc.message)
        console.print_json(orjson.dumps(result).decode())
        if result.get("status") != "SUCCEEDED":
            raise typer.Exit(1)

    return app
