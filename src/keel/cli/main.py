"""Entry point of the ``keel`` console script."""

from __future__ import annotations

from pathlib import Path

import typer

from keel import __version__
from keel.cli import approvals as approvals_cli  # issue 7
from keel.cli import cache as cache_cli
from keel.cli import chat, doctor, firewall, keys, models, serve
from keel.cli import mode as mode_cli
from keel.cli import policy as policy_cli
from keel.cli import rag as rag_cli
from keel.cli import tools as tools_cli
from keel.cli import wallets as wallets_cli  # issue 8
from keel.cli import workflows as workflows_cli  # issue 7
from keel.cli import x402 as x402_cli  # issue 8


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
    models.register(app)
    doctor.register(app)
    app.add_typer(keys.build(), name="keys", help="Create, list and revoke API keys.")
    app.add_typer(firewall.build(), name="firewall",
                  help="Prompt-injection firewall: test, eval, bans, allow-list.")
    app.add_typer(cache_cli.build(), name="cache",  # issue 4
                  help="Semantic cache: flush namespaces, stats, evaluate the operating point.")
    app.add_typer(policy_cli.build(), name="policy",  # issue 6
                  help="Cedar tool policies: validate, apply, rollback, test, draft, shadow.")
    app.add_typer(tools_cli.build(), name="tools", help="Agent tool gateway: tools, decisions.")
    app.add_typer(rag_cli.build(), name="rag", help="RAG: ingest, list and search indexes.")
    app.add_typer(mode_cli.build(), name="mode",
                  help="Degradation ladder: show, set and release the mode; flip log.")
    app.add_typer(wallets_cli.build(), name="wallet",  # issue 8
                  help="Agent wallets: create, fund, balance, ledger.")
    app.add_typer(x402_cli.build(), name="x402", help="x402 payments: the offline sandbox.")
    app.add_typer(approvals_cli.build(), name="approvals",  # issue 7
                  help="Human approvals: list, show, approve, deny.")
    app.add_typer(workflows_cli.build(), name="workflows",  # issue 7
                  help="Run Amazon States Language workflows durably (DBOS).")
    return app


def main() -> None:
    build()()


if __name__ == "__main__":
    main()
