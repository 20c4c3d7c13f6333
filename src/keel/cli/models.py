"""``keel models``: the model table."""

from __future__ import annotations

import typer
from rich.table import Table

from keel.cli.common import console, settings_from


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(ctx: typer.Context) -> None:
        """List the model table: routing and USD prices per 1M tokens."""
        settings = settings_from(ctx)
        table = Table("name", "kind", "provider", "upstream", "context", "$/1M in", "$/1M out")
        for m in settings.model_table():
            table.add_row(m.name, m.kind, m.provider, m.upstream_model if m.provider != "local"
                          else (m.path or "default GGUF"), str(m.context),
                          f"{m.input_usd_per_1m:g}", f"{m.output_usd_per_1m:g}")
        console.print(table)
