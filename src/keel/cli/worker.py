"""``keel worker``: serve durable job queues without HTTP (scale-out and scale-to-zero)."""

from __future__ import annotations

import typer

from keel.cli.common import err_console, fail, settings_from
from keel.errors import KeelError


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        ctx: typer.Context,
        queues: str | None = typer.Option(
            None, "--queues", "-q", help="Comma-separated queue names (default: every queue "
            "the enabled capabilities declare)."),
        idle_exit: float | None = typer.Option(
            None, "--idle-exit", min=0.0, help="Exit after this many seconds with nothing "
            "queued or running on the served queues (default: run until Ctrl-C)."),
        db: str | None = typer.Option(
            None, "--db", envvar="KEEL_WORKER_DB", show_envvar=True,
            help="Database URL shared with the gateway (relational store and DBOS system "
            "database), e.g. postgresql://host/keel; prefer the env var so a password "
            "does not show in the process list."),
    ) -> None:
        """Serve durable job queues next to the gateway (same data dir or the same
        Postgres), on this machine or another. Runs under an executor id of its own; if
        it dies, the gateway resumes its work."""
        from keel.jobs.worker import run

        settings = settings_from(ctx)
        names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None

        def say(line: str) -> None:
            err_console.print(line, markup=False, highlight=False)

        try:
            run(settings, queues=names, idle_exit_s=idle_exit, db=db, say=say)
        except KeelError as exc:
            fail(exc.message)
