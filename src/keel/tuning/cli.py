"""``keel feedback list|export``, ``keel train run|round|register`` and ``keel models
versions|promote|rollback`` (also under ``keel train``, their first home). They work on the
database directly (no gateway needed); a running gateway
serves a promotion or rollback within two seconds, without a restart."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from keel.cli.common import console, fail, new_table, settings_from
from keel.config import Settings
from keel.errors import KeelError

T = TypeVar("T")


def _with_loop(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(loop)`` against this install's database and local models."""
    from keel.app import open_database
    from keel.providers.registry import ModelRegistry
    from keel.storage.private_files import private_dir
    from keel.tuning.capability import _LazyScrubber
    from keel.tuning.loop import TuningLoop
    from keel.tuning.registry import VersionRegistry

    async def go() -> T:
        private_dir(settings.data_dir)
        db = open_database(settings)
        models = ModelRegistry(settings)
        try:
            loop = TuningLoop(settings, db, VersionRegistry(db), models.provider,
                              _LazyScrubber(settings.data_dir))
            return await fn(loop)
        finally:
            await models.aclose()
            db.dispose()

    try:
        return asyncio.run(go())
    except KeelError as exc:
        fail(exc.message)


_TENANT_HELP = ("Use only this tenant's feedback (needed when several tenants rated the "
                "model and [tuning] shared_tenants / the model's trigger `tenants` do not "
                "say which may share it).")


def build_feedback() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("list")
    def list_(ctx: typer.Context, model: str = typer.Option(None, help="Only this model."),
              tenant: str = typer.Option(None, help="Only this tenant."),
              rating: str = typer.Option(None, help="up or down."),
              trainable: bool = typer.Option(None, "--trainable/--not-trainable"),
              limit: int = typer.Option(50, min=1, max=10000),
              as_json: bool = typer.Option(False, "--json")) -> None:
        """Votes, newest first."""
        from keel.tuning.feedback import FeedbackFilter, list_feedback

        if rating not in (None, "up", "down"):
            fail("--rating is up or down")
        f = FeedbackFilter(tenant=tenant, model=model, trainable=trainable, limit=limit,
                           rating=None if rating is None else (1 if rating == "up" else -1))
        rows = _with_loop(settings_from(ctx),
                          lambda lp: lp.db.run(lambda c: list_feedback(c, f)))
        if as_json:
            typer.echo(json.dumps(rows))
            return
        table = new_table("when", "request", "tenant", "model", "vote", "trainable",
                          "correction")
        for r in rows:
            table.add_row(time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"])),
                          r["request_id"], r["tenant"], r["model"] or "",
                          "up" if r["rating"] == 1 else "down", "yes" if r["trainable"] else "no",
                          (r["correction"] or "")[:60])
        console.print(table)

    @app.command("export")
    def export(ctx: typer.Context, model: str = typer.Argument(..., help="Public model name."),
               tenant: str = typer.Option(None, help=_TENANT_HELP)) -> None:
        """Build the training dataset of MODEL (PII scrubbed, deduplicated, split by prompt
        cluster) under the data directory; prints its content hash and path."""

        async def go(lp: Any) -> Any:
            ds, path = await lp.build_dataset(model, tenant)
            return {"hash": ds.hash, "path": str(path), "train": len(ds.train),
                    "eval": len(ds.eval), "regression": len(ds.regression),
                    "scrubbed_entities": ds.scrubbed, "duplicates_dropped": ds.duplicates,
                    "pii_answers_dropped": ds.pii_answers}

        typer.echo(json.dumps(_with_loop(settings_from(ctx), go), indent=2))

    return app


def build_train() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("run")
    def run(spec_path: Path = typer.Argument(..., help="A training spec (JSON).")) -> None:
        """Train SPEC here (resumes from its last checkpoint); needs the train extra."""
        from keel.tuning.spec import TrainSpec

        try:
            from keel.tuning.trainer import train
        except ImportError as exc:
            fail(f"training needs the train extra (pip install 'keel[train]'): {exc}")
        try:
            spec = TrainSpec.load(spec_path)
            with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                          console=console) as bar:
                task = bar.add_task("train", total=None, loss="-")

                def on_step(step: int, total: int, loss: float) -> None:
                    bar.update(task, completed=step, total=total, loss=f"{loss:.3f}")

                result = train(spec, on_step=on_step)
        except KeelError as exc:
            fail(exc.message)
        typer.echo(json.dumps(result.to_json() | {"losses": result.losses[-5:]}, indent=2))

    @app.command("round")
    def round_(ctx: typer.Context, model: str = typer.Argument("gemma-3-270m"),
               max_steps: int = typer.Option(0, help="Cap the steps (0: epochs decide)."),
               tenant: str = typer.Option(None, help=_TENANT_HELP)) -> None:
        """One round now: dataset -> train -> evaluate -> register -> promote if it passes."""
        extra = {"max_steps": max_steps} if max_steps else {}
        res = _with_loop(settings_from(ctx),
                         lambda lp: lp.run_round(model, tenant, **extra))
        typer.echo(json.dumps({"status": res.status, "reason": res.reason,
                               "version": res.version.id if res.version else None,
                               "dataset": res.dataset_hash}, indent=2))
        if res.status == "failed":
            raise typer.Exit(1)

    @app.command("register")
    def register(ctx: typer.Context, spec_path: Path = typer.Argument(...),
                 promote: bool = typer.Option(True, "--promote/--no-promote")) -> None:
        """Evaluate a finished run (trained here or elsewhere) and register its adapter."""
        res = _with_loop(settings_from(ctx),
                         lambda lp: lp.register_run(spec_path, promote=promote))
        typer.echo(json.dumps({"status": res.status, "reason": res.reason,
                               "version": res.version.id if res.version else None}, indent=2))

    app.add_typer(build_versions())  # the registry commands, also as `keel train ...`
    return app


def build_versions() -> typer.Typer:
    """``versions|promote|rollback``: merged into ``keel models`` (and ``keel train``)."""
    app = typer.Typer(no_args_is_help=True)

    @app.command("versions")
    def versions(ctx: typer.Context, model: str = typer.Option(None),
                 as_json: bool = typer.Option(False, "--json")) -> None:
        """Model versions with lineage, gate scores and training cost."""
        vs = _with_loop(settings_from(ctx), lambda lp: lp.registry.list(model))
        if as_json:
            typer.echo(json.dumps([v.to_json() for v in vs]))
            return
        table = new_table("version", "status", "parent", "dataset", "held-out", "cost $",
                          "train s")
        for v in vs:
            rep = v.report or {}
            scores = f"{rep.get('champion_eval', 0):.2f} -> {rep.get('candidate_eval', 0):.2f}"
            table.add_row(v.id, v.status, v.parent or "base", v.dataset_hash[:12], scores,
                          f"{v.metrics.get('cost_usd', 0):.4f}",
                          f"{v.metrics.get('train_seconds', 0):.0f}")
        console.print(table)

    @app.command("promote")
    def promote(ctx: typer.Context, version: str = typer.Argument(...),
                force: bool = typer.Option(False, help="Promote even a refused version.")
                ) -> None:
        """Serve VERSION under its model's public name (no restart)."""
        v = _with_loop(settings_from(ctx), lambda lp: lp.registry.promote(version, force=force))
        console.print(f"{v.model} now serves {v.id}")

    @app.command("rollback")
    def rollback(ctx: typer.Context, model: str = typer.Argument("gemma-3-270m")) -> None:
        """Serve what MODEL served before its current version (no restart)."""
        settings = settings_from(ctx)
        if model not in {m.name for m in settings.model_table()}:
            fail(f"unknown model {model!r}: it is not in the model table (`keel models` "
                 "lists it)")
        v = _with_loop(settings, lambda lp: lp.registry.rollback(model))
        console.print(f"{model} now serves {v.id if v else 'its base model'}")

    return app
