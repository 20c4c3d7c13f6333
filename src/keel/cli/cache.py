"""``keel cache``: flush namespaces, show hit rate and savings, evaluate the operating point."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import typer

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.errors import KeelError


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("flush")
    def flush(
        ctx: typer.Context,
        namespace: str = typer.Option(..., "--namespace", "-n", help="Cache namespace."),
        tenant: str | None = typer.Option(None, "--tenant", "-t", help="Only this tenant."),
    ) -> None:
        """Drop a namespace's cached answers (e.g. after its source documents changed)."""
        from keel.app import open_database
        from keel.cache.build import build_cache
        from keel.metering.metrics import GatewayMetrics
        from keel.storage.kv import open_kv

        settings = settings_from(ctx)

        async def run() -> int:
            kv = open_kv(settings.kv)
            db = open_database(settings)
            from keel.providers.embeddings import MiniLMEmbedder

            embedder = MiniLMEmbedder(settings.model_dir,
                                      precision=settings.local.embedder_precision)
            stage = build_cache(settings, kv, db, embedder,
                                GatewayMetrics().registry)
            try:
                removed = await stage.flush(namespace, tenant)
                if tenant and not removed and tenant != "default":
                    from keel.auth.keys import KeyStore

                    known = KeyStore(db).tenants()
                    if tenant not in known:
                        fail(f"no tenant {tenant!r} has API keys (tenants: "
                             f"{', '.join(known[:20]) or 'none'}); nothing was flushed")
                return removed
            finally:
                await stage.store.aclose()
                await kv.aclose()
                db.dispose()

        try:
            removed = asyncio.run(run())
        except KeelError as exc:
            fail(exc.message)
        who = f" for tenant {tenant!r}" if tenant else ""
        console.print(f"flushed namespace {namespace!r}{who}: {removed} entries removed")

    @app.command("stats")
    def stats(
        ctx: typer.Context,
        hours: float = typer.Option(24.0, help="Window, in hours."),
        tenant: str | None = typer.Option(None, "--tenant", "-t"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Hit rate, verifier rejections and savings over the last HOURS."""
        from keel.app import open_database
        from keel.cache.stats import summary

        settings = settings_from(ctx)
        db = open_database(settings)
        try:
            s = db.transaction(lambda c: summary(c, time.time() - hours * 3600, tenant))
        finally:
            db.dispose()
        if as_json:
            typer.echo(json.dumps(s))
            return
        t = new_table(title=f"cache, last {hours:g} h" + (f", tenant {tenant}" if tenant else ""))
        for col in ("hits (exact)", "hits (semantic)", "misses", "guard rejections", "bypass",
                    "errors", "hit rate", "tokens saved", "USD saved"):
            t.add_column(col, justify="right")
        t.add_row(str(s["hit_exact"]), str(s["hit_semantic"]), str(s["miss"]),
                  str(s["rejected"]), str(s["bypass"]), str(s["error"]),
                  f"{s['hit_rate']:.1%}", f"{s['tokens_saved']:,}", f"${s['usd_saved']:.4f}")
        console.print(t)

    @app.command("eval")
    def evaluate(
        ctx: typer.Context,
        pairs_file: Path = typer.Argument(
            ..., help="JSONL: text_a, text_b, label (or a, b, same)."),
        threshold: float | None = typer.Option(None, help="Cosine threshold (default: config)."),
        profile: str | None = typer.Option(
            None, help="strict or balanced (default: the [cache] profile)."),
        verifier: bool = typer.Option(True, "--verifier/--no-verifier"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Precision, recall and false-hit rate at the operating point, plus a sweep."""
        from keel.cache import evaluate as ev
        from keel.cache.profiles import make_verifier
        from keel.cache.settings import DEFAULT_THRESHOLD, NamespaceSettings
        from keel.providers.embeddings import MiniLMEmbedder

        settings = settings_from(ctx)
        if profile is not None and profile not in DEFAULT_THRESHOLD:
            from rich.markup import escape

            fail(f"--profile must be one of: {', '.join(DEFAULT_THRESHOLD)} "
                 f"(got {escape(repr(profile))})")
        if threshold is not None and not 0.5 <= threshold <= 1.0:  # as the config allows
            fail(f"--threshold must be a cosine similarity in [0.5, 1], got {threshold}")
        ns = NamespaceSettings.model_validate({"profile": profile})
        prof = settings.cache.profile_for(ns)
        th = settings.cache.threshold_for(ns) if threshold is None else threshold
        check = make_verifier(prof) if verifier else None
        try:
            pairs = ev.load_pairs(pairs_file)
        except KeelError as exc:
            fail(exc.message)
        embedder = MiniLMEmbedder(settings.model_dir, precision=settings.local.embedder_precision)
        with console.status(f"embedding {len(pairs):,} pairs"):
            a, b = asyncio.run(ev.pair_vectors(embedder, pairs))
            sims = (a * b).sum(axis=1)
            known = {p.a: a[i] for i, p in enumerate(pairs)} | {
                p.b: b[i] for i, p in enumerate(pairs)}
            vectors = asyncio.run(ev.phrase_vectors(embedder, pairs, check, known))
        embedder.close()
        out = ev.evaluate(pairs, sims, th, check, vectors)
        out["profile"] = prof
        if as_json:
            typer.echo(json.dumps(out))
            return
        _print_eval(out)

    return app


def _interval(bounds: list[float] | tuple[float, float], fmt: str) -> str:
    return f"{format(bounds[0], fmt)} to {format(bounds[1], fmt)}"


def _print_eval(out: dict[str, Any]) -> None:
    console.print(
        styled(("operating point", "bold"), f" ({out.get('profile', 'strict')}): "
               f"cosine >= {out['threshold']:.2f}"
               f"{' + verifier' if out['verifier'] else ''} on {out['pairs']:,} pairs: "
               f"precision {out['precision']:.3f}, recall {out['recall']:.3f}, "
               f"false-hit rate {out['false_hit_rate']:.2%} ({out['true_hits']} true hits, "
               f"{out['false_hits']} false hits); 95% intervals: recall "
               f"{_interval(out['recall_ci95'], '.3f')}, false-hit rate "
               f"{_interval(out['false_hit_rate_ci95'], '.2%')}"))
    t = new_table(title="threshold sweep")
    for col in ("cosine >=", "precision", "recall", "false-hit rate", "cosine-only precision"):
        t.add_column(col, justify="right")
    for row in out["sweep"]:
        t.add_row(f"{row['threshold']:.2f}", f"{row['precision']:.3f}", f"{row['recall']:.3f}",
                  f"{row['false_hit_rate']:.2%}", f"{row['cosine_only_precision']:.3f}")
    console.print(t)
