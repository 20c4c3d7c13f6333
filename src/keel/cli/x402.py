"""``keel x402``: the offline x402 sandbox (paid resource server + in-process facilitator)."""

from __future__ import annotations

import typer

from keel.cli.common import console, fail, new_table


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("sandbox")
    def sandbox(
        port: int = typer.Option(4020, "--port", "-p"),
        pay_to: str | None = typer.Option(None, "--pay-to",
                                          help="Payee address (default: the sandbox payee)."),
        faucet_usd: float = typer.Option(10.0, "--faucet-usd",
                                         help="USDC credited to each new payer address."),
    ) -> None:
        """Serve priced endpoints on 127.0.0.1 that settle on an in-memory USDC ledger."""
        import uvicorn

        from keel.x402.sandbox import build_sandbox, sandbox_payee

        if faucet_usd < 0:
            fail("--faucet-usd must not be negative")
        sb = build_sandbox(pay_to=pay_to, faucet_usd=faucet_usd)
        table = new_table("method", "path", "price", "pays to", title="x402 sandbox (offline)")
        for e in sb.endpoints:
            table.add_row(e.method, e.path, e.price, e.pay_to)
        if sb.mcp is not None:
            for t in sb.mcp.tools.values():
                table.add_row("MCP", f"/mcp {t.name}", t.price or "free",
                              (pay_to or sandbox_payee()) if t.price else "")
        console.print(table)
        console.print(f"network {sb.network}, payee {pay_to or sandbox_payee()}; allow it with "
                      f'wallets.payees = ["{pay_to or sandbox_payee()}"], let agents '
                      f'fetch it with wallets.x402.private_hosts = ["127.0.0.1:{port}"]'
                      " and permit paying with a Cedar policy on Action::\"x402:pay\"")
        console.print(f"chain state: http://127.0.0.1:{port}/_sandbox/ledger")
        uvicorn.run(sb.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")

    return app
