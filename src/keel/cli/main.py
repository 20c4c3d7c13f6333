"""Entry point of the ``keel`` console script."""

from __future__ import annotations

from pathlib import Path

import typer

from keel import __version__, capabilities
from keel.cli import chat, doctor, keys, models, serve, worker
from keel.cli.common import fail
from keel.errors import KeelError


def _version(value: bool) -> None:
    if value:
        typer.echo(f"keel {__version__}")
        raise typer.Exit()


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, add_completion=False,
                      help="keel: a self-hosted control plane for LLM features and AI agents.")

    @app.callback()
    def root(
        ctx: typer.Context,
        config: Path | None = typer.Option(
            None, "--config", "-c", envvar="KEEL_CONFIG", help="Path to keel.toml.",
            exists=False, dir_okay=False,
        ),
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="Print the version and exit."),
    ) -> None:
        ctx.obj = {"config": config}

    serve.register(app)
    chat.register(app)
    doctor.register(app)
    worker.register(app)
    app.add_typer(keys.build(), name="keys", help="Create, list and revoke API keys.")
    try:
        caps = capabilities.available()
    except KeelError as exc:  # a plugin that cannot load: name it, like a bad keel.toml
        fail(exc.message)
    # a capability group named like a core group adds its commands to it
    core = {"models": (models.build(), models.HELP)}
    for cap in caps:
        for group in cap.cli_groups():
            # installed = available, on or off: these commands manage state offline
            # (wallets before turning payments on, policies validated in CI)
            if group.name in core:
                core[group.name][0].add_typer(group.build())
            else:
                app.add_typer(group.build(), name=group.name, help=group.help)
    for name, (group_app, text) in core.items():
        app.add_typer(group_app, name=name, help=text)
    return app


def main() -> None:
    build()()


if __name__ == "__main__":
    main()
