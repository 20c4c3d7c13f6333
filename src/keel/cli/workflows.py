"""``keel workflows``: a client of the gateway's workflow API.

``run FILE.asl.json --input JSON`` registers the definition (a new version when it
changed), starts an execution and waits for it; the gateway runs it durably, so stopping
this command (or a crash of it) does not stop the execution, and no CLI process ever
takes over the gateway's workflows. ``--local`` runs it in this process instead, under an
executor id of its own: nothing resumes it if this process dies.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import typer

from keel.cli.common import console, err_console, fail, gateway_call, gateway_client, settings_from
from keel.errors import KeelError


def _client(settings: Any, url: str | None) -> httpx.Client:
    return gateway_client(settings, url)


def _call(c: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    return gateway_call(c, method, path, hint=", or pass --local to run in this process",
                        **kw).json()


def _print(data: Any) -> None:
    console.print_json(orjson.dumps(data).decode())


async def _run_local(settings: Any, defn: dict[str, Any], data: Any) -> dict[str, Any]:
    from keel.app import open_database
    from keel.approvals.service import ApprovalsService

    db = open_database(settings)
    # An executor id of its own: DBOS recovers only its own executor's workflows, so this
    # process never takes over the gateway's (nor another CLI's) executions.
    svc = ApprovalsService(settings, db, executor_id=f"keel-cli-{os.getpid()}-"
                                                    f"{secrets.token_hex(4)}")
    await svc.ensure_started()
    try:
        handle = await svc.engine.run_asl(defn, data)
        with err_console.status("running in this process (--local)..."):
            result: dict[str, Any] = await handle.get_result()
        return result
    finally:
        await svc.stop()
        db.dispose()


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)
    url_opt = typer.Option(None, "--url", help="Gateway base URL (default from settings).")

    @app.command("run")
    def run(
        ctx: typer.Context,
        source: str = typer.Argument(..., help="An ASL JSON file, or a registered name."),
        input_: str = typer.Option("{}", "--input", "-i", help="Execution input (JSON)."),
        name: str | None = typer.Option(None, "--name", help="Register the file as NAME "
                                        "(default: the file name without .asl.json)."),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the end."),
        local: bool = typer.Option(False, "--local", help="Run in this process (not "
                                   "durable beyond it) instead of in the gateway."),
        url: str | None = url_opt,
    ) -> None:
        """Run a state machine in the gateway: Task, Choice, Pass, Wait, Succeed, Fail,
        Map, Parallel, Retry/Catch; `.waitForTaskToken` tasks wait durably for
        `keel approvals approve ID`."""
        from keel.workflows.definition import load

        settings = settings_from(ctx)
        try:
            data = orjson.loads(input_)
        except orjson.JSONDecodeError as exc:
            fail(f"--input is not valid JSON: {exc}")
        path = Path(source)
        if local:
            try:
                from keel.approvals.handlers import HandlerRegistry

                reg = HandlerRegistry()
                reg.load_modules(settings.approvals.handler_modules)
                def problem(kind: str, target: str) -> str | None:
                    missing = kind == "python" and not reg.has(target)
                    return (f"no handler registered for {target!r}; add a module with "
                            "register(registry) to [approvals] handler_modules"
                            if missing else None)

                defn = load(path, problem)
                result = asyncio.run(_run_local(settings, defn, data))
            except KeelError as exc:
                fail(exc.message)
            _print(result)
            if result.get("status") != "SUCCEEDED":
                raise typer.Exit(1)
            return
        with _client(settings, url) as c:
            if path.suffix == ".json" or path.exists():
                if not path.exists():
                    fail(f"{path} does not exist")
                wf = name or path.name.removesuffix(".json").removesuffix(".asl")
                _call(c, "PUT", f"/v1/workflows/{wf}", content=path.read_bytes())
            else:
                wf = source
            ex = _call(c, "POST", f"/v1/workflows/{wf}/executions",
                       content=orjson.dumps({"input": data}))
            if wait:
                with err_console.status(f"execution {ex['id']} runs in the gateway "
                                        "(Ctrl-C stops waiting, not the execution)..."):
                    while ex["status"] == "RUNNING":
                        time.sleep(0.2)
                        ex = _call(c, "GET", f"/v1/executions/{ex['id']}")
        _print(ex)
        if wait and ex.get("status") != "SUCCEEDED":
            raise typer.Exit(1)

    @app.command("worker")
    def worker(ctx: typer.Context) -> None:
        """Serve distributed Map items (ProcessorConfig.Mode DISTRIBUTED) next to the
        gateway, on the same data dir / system database, until Ctrl-C. Runs under an
        executor id of its own; if it dies, the gateway resumes its items."""
        from keel.jobs.worker import serve
        from keel.workflows.interpreter import MAP_QUEUE

        def ready(_served: list[str], executor: str) -> None:
            err_console.print(f"serving distributed Map items as {executor} (Ctrl-C stops)",
                              markup=False, highlight=False)

        try:
            asyncio.run(serve(settings_from(ctx), queues=[MAP_QUEUE], on_ready=ready))
        except KeyboardInterrupt:
            pass
        except KeelError as exc:
            fail(exc.message)

    @app.command("put")
    def put(ctx: typer.Context, file: Path, name: str | None = typer.Option(None, "--name"),
            url: str | None = url_opt) -> None:
        """Register (or update) a workflow from an ASL JSON file."""
        wf = name or file.name.removesuffix(".json").removesuffix(".asl")
        with _client(settings_from(ctx), url) as c:
            _print(_call(c, "PUT", f"/v1/workflows/{wf}", content=file.read_bytes()))

    @app.command("describe")
    def describe(ctx: typer.Context, execution_id: str, url: str | None = url_opt) -> None:
        """An execution's status, input and output."""
        with _client(settings_from(ctx), url) as c:
            _print(_call(c, "GET", f"/v1/executions/{execution_id}"))

    @app.command("history")
    def history(ctx: typer.Context, execution_id: str, url: str | None = url_opt) -> None:
        """An execution's history events."""
        with _client(settings_from(ctx), url) as c:
            _print(_call(c, "GET", f"/v1/executions/{execution_id}/history")["data"])

    @app.command("stop")
    def stop(ctx: typer.Context, execution_id: str, cause: str | None = typer.Option(
            None, "--cause"), url: str | None = url_opt) -> None:
        """Stop a running execution (ABORTED)."""
        with _client(settings_from(ctx), url) as c:
            _print(_call(c, "POST", f"/v1/executions/{execution_id}/stop",
                         content=orjson.dumps({"cause": cause} if cause else {})))

    @app.command("list")
    def list_(ctx: typer.Context, workflow: str | None = typer.Option(None, "--workflow"),
              status: str | None = typer.Option(None, "--status"),
              url: str | None = url_opt) -> None:
        """Recent executions (JSON)."""
        params = {k: v for k, v in (("workflow", workflow), ("status", status)) if v}
        with _client(settings_from(ctx), url) as c:
            _print(_call(c, "GET", "/v1/executions", params=params)["data"])

    return app
