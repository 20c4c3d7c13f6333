"""``keel wallet``: agent wallets, funding, balances and the ledger."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.errors import KeelError
from keel.storage.private_files import private_dir
from keel.wallets.money import fmt_usd, usd_to_micros


def _service(ctx: typer.Context) -> Any:
    from keel.app import open_database
    from keel.wallets.service import WalletService

    settings = settings_from(ctx, strict_env=True)
    private_dir(settings.data_dir)
    try:
        return WalletService(settings.wallets, open_database(settings))
    except KeelError as exc:
        fail(exc.message)


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("keygen")
    def keygen() -> None:
        """Print a fresh secret for wallets.encryption_key (put it in $KEEL_WALLET_KEY)."""
        from keel.wallets.crypto import new_key_material

        typer.echo(new_key_material())

    @app.command("create")
    def create(
        ctx: typer.Context,
        tenant: str = typer.Option(..., "--tenant", "-t"),
        agent: str = typer.Option(..., "--agent", "-a"),
        key_env: str | None = typer.Option(
            None, "--key-env", help="Use an external key from this environment variable "
            "instead of generating one (it is never stored)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Create the agent's wallet: a new EVM key, stored encrypted (or an external signer)."""
        svc = _service(ctx)
        try:
            w = svc.create_wallet(tenant, agent,
                                  key_ref=f"env:{key_env}" if key_env else None)
        except KeelError as exc:
            fail(exc.message)
        if as_json:
            typer.echo(json.dumps({"id": w.id, "tenant": w.tenant, "agent": w.agent,
                                   "address": w.address, "external_signer": w.external}))
            return
        console.print(styled(("created wallet", "green"),
                             f" {w.id} for {tenant}/{agent}: {w.address}"
                             + (" (external signer)" if w.external else "")))

    @app.command("fund")
    def fund(
        ctx: typer.Context,
        tenant: str = typer.Option(..., "--tenant", "-t"),
        agent: str = typer.Option(..., "--agent", "-a"),
        usd: str = typer.Argument(..., help="Amount in USD, e.g. 5.00"),
        memo: str = typer.Option("", "--memo"),
    ) -> None:
        """Credit the agent's spendable balance in keel's ledger (funding -> available)."""
        try:
            micros = usd_to_micros(usd)
            if micros <= 0:
                raise ValueError("the amount must be positive")
            entry = _service(ctx).fund(tenant, agent, micros, memo)
        except ValueError as exc:
            fail(str(exc))
        except KeelError as exc:
            fail(exc.message)
        console.print(f"funded {tenant}/{agent} with {fmt_usd(micros)} (entry {entry})")

    @app.command("balance")
    def balance(
        ctx: typer.Context,
        tenant: str = typer.Option(..., "--tenant", "-t"),
        agent: str | None = typer.Option(None, "--agent", "-a", help="Default: every agent."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Available and held balances per wallet."""
        svc = _service(ctx)
        try:
            ws = [svc.wallet(tenant, agent)] if agent else \
                svc.db.transaction(lambda c: svc.store.list(c, tenant))
        except KeelError as exc:
            fail(exc.message)
        rows = [{"agent": w.agent, "address": w.address, **svc.balance(w)} for w in ws]
        if as_json:
            typer.echo(json.dumps(rows))
            return
        table = new_table("agent", "address", "available", "held")
        for r in rows:
            table.add_row(r["agent"], r["address"], fmt_usd(r.get("available", 0)),
                          fmt_usd(r.get("held", 0)))
        console.print(table)

    @app.command("ledger")
    def ledger_(
        ctx: typer.Context,
        tenant: str = typer.Option(..., "--tenant", "-t"),
        agent: str = typer.Option(..., "--agent", "-a"),
        limit: int = typer.Option(50, "--limit"),
        check: bool = typer.Option(False, "--check", help="Verify the books balance."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """The agent's journal entries (fund, reserve, settle, release, refund)."""
        from keel.wallets.ledger import check_books
        from keel.wallets.reports import wallet_entries

        svc = _service(ctx)
        try:
            w = svc.wallet(tenant, agent)
        except KeelError as exc:
            fail(exc.message)
        rows = svc.db.transaction(lambda c: wallet_entries(c, w.id, limit))
        report = svc.db.transaction(check_books) if check else None
        if as_json:
            typer.echo(json.dumps({"entries": rows,
                                   "balanced": report.balanced if report else None}))
        else:
            table = new_table("time", "kind", "available", "held", "payment", "memo")
            for r in rows:
                table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"])),
                              r["kind"], fmt_usd(r["available"]), fmt_usd(r["held"]),
                              r["payment_id"] or "", (r["memo"] or "")[:40])
            console.print(table)
            if report is not None:
                console.print(styled(("books balance", "green")) if report.balanced
                              else styled(("books do not balance:", "red"), f" {report}"))
        if report is not None and not report.balanced:
            raise typer.Exit(2)

    @app.command("refund")
    def refund(
        ctx: typer.Context,
        payment_id: str = typer.Argument(..., help="The settled payment's id (see `ledger`)."),
        tenant: str = typer.Option(..., "--tenant", "-t"),
        memo: str = typer.Option("", "--memo", help="Why, e.g. the payee's refund reference."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Book a payee's refund of a settled payment (payee -> the agent's balance)."""
        try:
            out = _service(ctx).refund(tenant, payment_id, memo)
        except KeelError as exc:
            fail(exc.message)
        if as_json:
            typer.echo(json.dumps(out))
            return
        console.print(f"refunded {out['amount']} of payment {payment_id} to {tenant}/"
                      f"{out['agent']}")

    @app.command("session-open")
    def session_open(
        ctx: typer.Context,
        tenant: str = typer.Option(..., "--tenant", "-t"),
        agent: str = typer.Option(..., "--agent", "-a"),
        budget: str | None = typer.Option(None, "--budget", help="USD, e.g. 5.00; default: "
                                          "wallets.session_budget_usd."),
        max_calls: int | None = typer.Option(None, "--max-calls", min=1),
        ttl_s: float | None = typer.Option(None, "--ttl-s", help="Lifetime in seconds."),
        session_id: str | None = typer.Option(None, "--id", help="A readable id (default: "
                                              "generated)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Open a budget session for an agent, as an operator (agents pay only within
        sessions keel opened)."""
        import getpass

        try:
            micros = usd_to_micros(budget) if budget is not None else None
        except ValueError as exc:
            fail(str(exc))
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "unknown"
        try:
            s = _service(ctx).open_session(
                tenant, agent, opened_by=f"cli:{user}", by_agent=False, budget_micros=micros,
                max_calls=max_calls, ttl_s=ttl_s, session_id=session_id)
        except KeelError as exc:
            fail(exc.message)
        if as_json:
            typer.echo(json.dumps(s.as_dict()))
            return
        console.print(f"session {s.id} for {tenant}/{agent}: budget {fmt_usd(s.budget)}, "
                      f"{s.max_calls} paid calls, until "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.expires_at))}",
                      markup=False)

    @app.command("session-close")
    def session_close(
        ctx: typer.Context,
        session_id: str = typer.Argument(...),
        tenant: str = typer.Option(..., "--tenant", "-t"),
    ) -> None:
        """Close a session: its budget cannot be used any more."""
        try:
            s = _service(ctx).close_session(tenant, session_id, "cli")
        except KeelError as exc:
            fail(exc.message)
        console.print(f"closed session {s.id} of {tenant}/{s.agent}", markup=False)

    return app
