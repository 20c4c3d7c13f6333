"""``keel qa suite``: import, build, list, show, diff and export versioned suites."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from keel.cli.common import console, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError

T = TypeVar("T")


def _with_db(settings: Settings, fn: Callable[..., T]) -> T:
    from keel.app import open_database

    db = open_database(settings)
    try:
        return db.transaction(fn)
    finally:
        db.dispose()


def _guard(fn: Callable[[], T]) -> T:
    from keel.qa.cli import bad_input

    try:
        return fn()
    except KeelError as exc:
        raise bad_input(exc.message) from None


def import_cmd(ctx: typer.Context,
               file: Annotated[Path, typer.Argument(help="suite JSONL")],
               name: Annotated[str, typer.Option("--name", help="suite name")],
               ) -> None:
    """Store a JSONL suite as a new version of NAME (same prompts: same version)."""
    from keel.qa import suites

    settings = settings_from(ctx)
    prompts = _guard(lambda: suites.load_file(file))

    def save(c):  # type: ignore[no-untyped-def]
        prev = suites.versions(c, name)
        return suites.save(c, name, prompts, parent=prev[0].version if prev else None,
                           meta={"source": f"import:{file.name}"})

    v = _guard(lambda: _with_db(settings, save))
    console.print(styled(("suite ", ""), (f"{v.name}@{v.version}", "bold"),
                         f"  {v.n_prompts} prompts"))


def list_cmd(ctx: typer.Context,
             name: Annotated[str | None, typer.Argument()] = None) -> None:
    """Suites and their versions, newest first."""
    import time

    from keel.qa import suites

    settings = settings_from(ctx)
    rows = _with_db(settings, lambda c: suites.versions(c, name))
    table = new_table("suite", "version", "parent", "prompts", "created", "source")
    for v in rows:
        table.add_row(v.name, v.version, v.parent or "-", str(v.n_prompts),
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.created)),
                      str(v.meta.get("source", "")))
    console.print(table)


def show_cmd(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")],
             limit: Annotated[int, typer.Option("--limit")] = 20) -> None:
    """Prompts of a suite version, with persona and provenance."""
    from keel.qa import suites

    settings = settings_from(ctx)
    name, version, prompts = _guard(lambda: _with_db(settings,
                                                     lambda c: suites.resolve(c, ref)))
    console.print(styled((f"{name}@{version}", "bold"), f"  {len(prompts)} prompts"))
    table = new_table("id", "persona", "prompt", "provenance")
    for p in prompts[:limit]:
        prov = p.provenance.get("source", "")
        table.add_row(p.id, p.persona[:40], p.prompt[:120], str(prov))
    console.print(table)


def diff_cmd(ctx: typer.Context,
             old: Annotated[str, typer.Argument(help="NAME@VERSION or file")],
             new: Annotated[str, typer.Argument(help="NAME@VERSION or file")]) -> None:
    """Prompts added and removed between two versions."""
    from keel.qa import suites

    settings = settings_from(ctx)
    _, v_old, a = _guard(lambda: _with_db(settings, lambda c: suites.resolve(c, old)))
    _, v_new, b = _guard(lambda: _with_db(settings, lambda c: suites.resolve(c, new)))
    d = suites.diff(a, b)
    console.print(f"{v_old} -> {v_new}: +{len(d.added)} -{len(d.removed)} ={d.kept}")
    for p in d.added:
        console.print(styled(("+ ", "green"), f"{p.id} {p.prompt[:100]}"))
    for p in d.removed:
        console.print(styled(("- ", "red"), f"{p.id} {p.prompt[:100]}"))


def export_cmd(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME[@VERSION]")]
               ) -> None:
    """Write a suite version as JSONL to stdout."""
    from keel.qa import suites

    settings = settings_from(ctx)
    _, _, prompts = _guard(lambda: _with_db(settings, lambda c: suites.resolve(c, ref)))
    sys.stdout.write(suites.to_jsonl(prompts))


def build() -> typer.Typer:
    from keel.qa import build_cmd

    app = typer.Typer(no_args_is_help=True)
    app.command("import")(import_cmd)
    app.command("build")(build_cmd.build_cmd)
    app.command("list")(list_cmd)
    app.command("show")(show_cmd)
    app.command("diff")(diff_cmd)
    app.command("export")(export_cmd)
    return app
