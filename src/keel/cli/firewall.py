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
from keel.firewall.routes import ALLOW_ROLES
from keel.firewall.state import SUBJECT_KINDS, describe

T = TypeVar("T")


def _engine(settings: Settings, semantic: bool) -> Any:
    from keel.firewall.engine import Firewall

    embedder = None
    if semantic and settings.firewall.semantic:
        from keel.providers.embeddings import MiniLMEmbedder

        embedder = MiniLMEmbedder(settings.model_dir, precision=settings.local.embedder_precision)
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
            verdict = asyncio.run(fw.check([text]))
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
                return await fw.check([text]) is not None

            report = asyncio.run(evaluate(predict, rows))
        except KeelError as exc:
            fail(exc.message)
        data = report.to_dict()
        if as_json:
            typer.echo(json.dumps(data))
            return
        console.print_json(json.dumps(data))

    @app.command("bans")
    def bans(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
        """List active bans and watched keys (reported and rate-limited, not banned)."""
        settings = settings_from(ctx)

        async def both(st: Any) -> tuple[list[Any], list[Any]]:
            return await st.list_bans(), await st.list_watches()

        active, watched = _with_state(settings, both)
        if as_json:
            typer.echo(json.dumps({"bans": [b.to_dict() for b in active],
                                   "watched": [w.to_dict() for w in watched]}))
            return
        table = new_table("client", "who", "since", "until", "reason", title="bans")
        for b in active:
            table.add_row(b.client, describe(b.client), _ts(b.since),
                          _ts(b.until) if b.until else "never", b.reason)
        console.print(table)
        if watched:
            wt = new_table("key", "since", "until", "reason",
                       title="watched keys (rate-limited while anonymous, not banned)")
            for w in watched:
                wt.add_row(w.client, _ts(w.since),
                           _ts(w.until) if w.until else "never", w.reason)
            console.print(wt)

    @app.command("unban")
    def unban(ctx: typer.Context,
              client: str = typer.Argument(..., help="user:TENANT:ID, ip:ADDRESS or "
                                                     "key:KEY_ID (see `keel firewall bans`)"),
              ) -> None:
        """Lift a ban or a key's watch (and reset the strikes)."""
        settings = settings_from(ctx)
        if not client.startswith(SUBJECT_KINDS):
            fail("name the client as user:TENANT:ID, ip:ADDRESS or key:KEY_ID "
                 "(see `keel firewall bans`)")
        if not _with_state(settings, lambda st: st.unban(client)):
            fail(f"{client} is not banned")
        console.print(f"unbanned {client}", markup=False)

    @app.command("ban")
    def ban(ctx: typer.Context,
            client: str = typer.Argument(..., help="user:TENANT:ID, ip:ADDRESS or key:KEY_ID"),
            hours: float = typer.Option(24.0, "--hours", help="Duration; 0 = until lifted."),
            reason: str = typer.Option("banned by an admin", "--reason")) -> None:
        """Ban an end user (or an address or key) by hand."""
        settings = settings_from(ctx)
        if not client.startswith(SUBJECT_KINDS) or client.endswith(":"):
            fail("name the client as user:TENANT:ID, ip:ADDRESS or key:KEY_ID")
        if hours < 0:
            fail("--hours must be >= 0")
        b = _with_state(settings, lambda st: st.ban(client, reason, hours * 3600 or None))
        console.print(f"banned {client} until "
                      f"{_ts(b.until) if b.until else 'lifted by an admin'}", markup=False)

    @app.command("allow")
    def allow(
        ctx: typer.Context,
        rule: str | None = typer.Option(None, "--rule", help="Rule id to allow ('semantic': "
                                        "the whole semantic layer)."),
        tenant: str = typer.Option("*", "--tenant", help="Only for this tenant."),
        prompt: str | None = typer.Option(None, "--prompt", help="Allow this exact text."),
        role: str = typer.Option("user", "--role", help="Role the exact text is allowed in: "
                                 "user, tool, function, prompt, tool_arguments, "
                                 "tool_result, or * (any)."),
    ) -> None:
        """Allow-list a false positive: a rule id for a tenant, or one exact text in one role.
        An entry never waives the check of the other texts of a request."""
        settings = settings_from(ctx)
        if bool(rule) == bool(prompt):
            fail("give exactly one of --rule RULE_ID or --prompt TEXT")
        if role not in ALLOW_ROLES:
            fail(f"--role must be one of {', '.join(ALLOW_ROLES)}")
        if rule:
            _with_state(settings, lambda st: st.allow_rule(rule, tenant))
            console.print(f"allowed rule {rule} for tenant {tenant}", markup=False)
        else:
            digest = _with_state(settings,
                                 lambda st: st.allow_text(prompt or "", role, tenant))
            console.print(f"allowed text sha256 {digest} in role {role} for tenant {tenant}",
                          markup=False)

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
