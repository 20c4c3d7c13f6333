"""``keel keys``: API keys (shown once at creation, stored hashed)."""

from __future__ import annotations

import dataclasses
import json
import time

import typer

from keel.auth.keys import KeyStore, tenant_problem
from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.errors import KeelError
from keel.storage.private_files import private_dir


def _store(ctx: typer.Context) -> KeyStore:
    from keel.app import open_database

    settings = settings_from(ctx)
    private_dir(settings.data_dir)
    try:
        return KeyStore(open_database(settings))
    except KeelError as exc:
        fail(exc.message)


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("create")
    def create(
        ctx: typer.Context,
        tenant: str = typer.Option(..., "--tenant", "-t", help="Tenant the key belongs to."),
        agent: str | None = typer.Option(None, "--agent", "-a", help="Agent identity."),
        admin: bool = typer.Option(False, "--admin", help="Allow admin endpoints."),
        name: str | None = typer.Option(None, "--name", help="A label for humans."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Create an API key. The key is printed once and never stored in clear."""
        problem = tenant_problem(tenant)
        if problem is not None:
            fail(f"--tenant: {problem}")
        new = _store(ctx).create(tenant, agent=agent, admin=admin, name=name)
        if as_json:
            typer.echo(json.dumps({**new.info.__dict__, "key": new.secret}))
            return
        console.print(styled(("created key", "green"), f" id={new.info.id} tenant={tenant}"
                             + (f" agent={agent}" if agent else "") + (" admin" if admin else "")))
        console.print("Store it now; keel keeps only its hash:")
        typer.echo(new.secret)

    @app.command("list")
    def list_(
        ctx: typer.Context,
        tenant: str | None = typer.Option(None, "--tenant", "-t"),
        all_: bool = typer.Option(False, "--all", help="Include revoked keys."),
        as_json: bool = typer.Option(False, "--json", help="JSON, one list."),
    ) -> None:
        """List API keys (ids and hints only)."""
        keys = _store(ctx).list(tenant=tenant, include_revoked=all_)
        if as_json:
            typer.echo(json.dumps([dataclasses.asdict(k) for k in keys]))
            return
        table = new_table("id", "hint", "tenant", "agent", "admin", "name", "created", "revoked")
        for k in keys:
            table.add_row(
                k.id, "…" + k.hint, k.tenant, k.agent or "", "yes" if k.admin else "",
                k.name or "", time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at)),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(k.revoked_at))
                if k.revoked_at else "",
            )
        console.print(table)

    @app.command("revoke")
    def revoke(ctx: typer.Context, key_id: str = typer.Argument(..., help="Key id.")) -> None:
        """Revoke a key; gateways stop accepting it within seconds."""
        try:
            _store(ctx).revoke(key_id)
        except KeelError as exc:
            fail(exc.message)
        console.print(f"revoked {key_id}")

    return app
