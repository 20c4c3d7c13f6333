"""``keel models``: the model table; capabilities add subcommands to the group (the tuning
loop's ``versions|promote|rollback``)."""

from __future__ import annotations

import json

import typer

from keel.cli.common import console, new_table, settings_from

HELP = "The model table (routing, prices) and, with tuning installed, model versions."


def build() -> typer.Typer:
    app = typer.Typer()

    @app.callback(invoke_without_command=True)
    def models(ctx: typer.Context,
               as_json: bool = typer.Option(False, "--json", help="JSON, one list.")) -> None:
        """List the model table: routing and USD prices per 1M tokens."""
        if ctx.invoked_subcommand is not None:
            return
        settings = settings_from(ctx)
        if as_json:
            typer.echo(json.dumps([m.model_dump(mode="json", exclude={"api_key"})
                                   for m in settings.model_table()]))
            return
        table = new_table("name", "kind", "provider", "upstream", "context", "$/1M in", "$/1M out")
        for m in settings.model_table():
            table.add_row(m.name, m.kind, m.provider, m.upstream_model if m.provider != "local"
                          else (m.path or ("built-in ONNX" if m.kind == "embedding"
                                           else "default GGUF")), str(m.context),
                          f"{m.input_usd_per_1m:g}", f"{m.output_usd_per_1m:g}")
        console.print(table)

    return app
