"""``keel firewall``: test prompts, evaluate rule sets, manage bans and the allow-list."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError

T = TypeVar("T")


def _engine(settings: Settings, semantic: bool) -> Any:
    from keel.firewall.engine import Firewall

    embedder = None
    if semantic and settings.firewall.semantic:
        from keel.providers.embeddings import MiniLMEmbedder

        embedder = MiniLMEmbedder(settings.model_dir)
    return Firewall.build(settings.firewall, embedder)


def _with_state(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from keel.firewall.state import FirewallState
    from keel.storage.kv import open_kv

    async def run() -> T:
        kv = open_kv(settings.kv)
        try:
            return await fn(FirewallState(kv, settings.firewall))
        finally:
            await kv.aclose()

    try:
        return asyncio.run(run())
    except KeelError as exc:
        fail(exc.message)


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("test")
    def test(
        ctx: typer.Context,
        text: str = typer.Argument(..., help="The prompt to check."),
        as_json: bool = typer.Option(False, "--json"),
        semantic: bool = typer.Option(True, "--semantic/--no-semantic"),
    ) -> None:
        """Say which layer and rule would block TEXT, and why."""
        settings = settings_from(ctx)
        try:
            fw = _engine(settings, semantic)
            verdict = asyncio.run(fw.check([text], [text]))
        except KeelError as exc:
            fail(exc.message)
        out = {"blocked": verdict is not None,
               "layer": verdict.layer if verdict else None,
               "rule": verdict.rule if verdict else None,
               "category": verdict.category if verdict else None,
               "score": round(verdict.score, 4) if verdict else None,
               "detail": verdict.detail if verdict else None}
        if as_json:
            typer.echo(json.dumps(out))
        elif verdict is None:
            console.print(styled(("allowed", "green"), ": no signature matched"
                                 + (" and the semantic layer found no close attack"
                                    if fw.semantic else "")))
        else:
            console.print(styled(("blocked", "red"), f" by the {verdict.layer} layer: rule ",
                                 (str(verdict.rule), "bold"), f" ({verdict.category}, score "
                                 f"{verdict.score:.3f}) — {verdict.detail}"))
        raise typer.Exit(1 if verdict else 0)

    @app.command("eval")
    def eval_(
        ctx: typer.Context,
        path: Path = typer.Argument(..., exists=True, dir_okay=False,
                                    help="JSONL with `text` and `label`."),
        as_json: bool = typer.Option(False, "--json"),
        semantic: bool = typer.Option(True, "--semantic/--no-semantic"),
    ) -> None:
        """Detection and false-positive rate per category on a labelled JSONL file."""
        from keel.firewall.evaluate import evaluate, read_jsonl_eval

        settings = settings_from(ctx)
        try:
            rows = read_jsonl_eval(path)
            fw = _engine(settings, semantic)

            async def predict(text: str) -> bool:
                return await fw.check([text], [text]) is not None

            report = asyncio.run(evaluate(predict, rows))
        except KeelError as exc:
            fail(exc.message)
        data = report.to_dict()
        if as_json:
            typer.echo(json.dumps(data))
            return
        console.print_json(json.dumps(data))

    @app.command("bans")
    def bans(ctx: typer.Context) -> None:
        """List active bans."""
        settings = settings_from(ctx)
        active = _with_state(settings, lambda st: st.list_bans())
        table = new_table("client", "since", "until", "reason")
        for b in active:
            table.add_row(b.client, _ts(b.since), _ts(b.until) if b.until else "never",
                          b.reason)
        console.print(table)

    @app.command("unban")
    def unban(ctx: typer.Context,
              client: str = typer.Argument(..., help="ip:ADDRESS or key:KEY_ID")) -> None:
        """Lift a ban (and reset the client's strikes)."""
        settings = settings_from(ctx)
        if not client.startswith(("ip:", "key:")):
            fail("name the client as ip:ADDRESS or key:KEY_ID (see `keel firewall bans`)")
        if not _with_state(settings, lambda st: st.unban(client)):
            fail(f"{client} is not banned")
        console.print(f"unbanned {client}")

    @app.command("allow")
    def allow(
        ctx: typer.Context,
        rule: str | None = typer.Option(None, "--rule", help="Rule id to allow."),
        tenant: str = typer.Option("*", "--tenant", help="Only for this tenant."),
        prompt: str | None = typer.Option(None, "--prompt", help="Allow this exact text."),
    ) -> None:
        """Allow-list a false positive by rule id (+ tenant) or by exact prompt."""
        settings = settings_from(ctx)
        if bool(rule) == bool(prompt):
            fail("give exactly one of --rule RULE_ID or --prompt TEXT")
        if rule:
            _with_state(settings, lambda st: st.allow_rule(rule, tenant))
            console.print(f"allowed rule {rule} for tenant {tenant}")
        else:
            digest = _with_state(settings, lambda st: st.allow_prompt(prompt or ""))
            console.print(f"allowed prompt sha256 {digest}")

    @app.command("export-blocked")
    def export_blocked(
        ctx: typer.Context,
        out: Path = typer.Option(Path("blocked.jsonl"), "--out", "-o"),
        limit: int = typer.Option(10_000, "--limit"),
    ) -> None:
        """Write blocked prompts from the request log as a JSONL regression set."""
        from keel.app import open_database
        from keel.firewall.export import blocked_rows

        settings = settings_from(ctx)
        db = open_database(settings)
        try:
            rows = db.transaction(lambda c: blocked_rows(c, limit))
        finally:
            db.dispose()
        with out.open("w") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
        console.print(f"wrote {len(rows)} blocked prompts to {out}")

    return app


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
