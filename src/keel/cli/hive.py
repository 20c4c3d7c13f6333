"""``keel hive``: list tasks, print or follow a stream, read or write a shared file, report
sizes, collect expired tasks.

The commands open the hive's backend directly (the directory or Redis that ``[hive] url``
names), so they work with the server down and from any machine that shares the mount.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from keel.cli.common import console, fail, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError
from keel.gateway.context import Principal

T = TypeVar("T")


def _run(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from keel.hive.service import HiveService, open_store

    async def go() -> T:
        hive = HiveService(open_store(settings.hive, settings.data_dir), settings.hive)
        try:
            return await fn(hive)
        finally:
            await hive.aclose()

    try:
        return asyncio.run(go())
    except KeelError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _target(text: str) -> tuple[str, str]:
    task, sep, stream = text.partition("/")
    if not sep or not task or not stream:
        raise typer.BadParameter(f"{text!r}: write TASK/STREAM")
    return task, stream


def _file(text: str) -> str | None:
    """``TASK/files/NAME`` -> NAME (a shared file), else ``None`` (a stream)."""
    _task, _, rest = text.partition("/")
    return rest[len("files/"):] if rest.startswith("files/") else None


def _read_source(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path!r}: {exc.strerror}") from None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


TENANT = typer.Option("default", "--tenant", "-t", help="Tenant whose hive to use.")


def build() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.command("ls")
    def ls(ctx: typer.Context, task: str = typer.Argument("", help="Show this task's streams."),
           tenant: str = TENANT) -> None:
        """Tasks (or one task's streams) with size, age and expiry."""
        settings = settings_from(ctx)
        now = time.time()
        if task:
            info = _run(settings, lambda h: h.task(tenant, task))
            t = new_table("stream", "records", "size", "ended", "last write")
            for s in info.streams:
                t.add_row(s.name, str(s.records), _size(s.bytes), "yes" if s.ended else "",
                          _age(now - s.last_ts) + " ago")
            console.print(t)
            if info.files:
                f = new_table("file", "version", "size", "writer", "last write")
                for fi in info.files:
                    f.add_row(fi.name, str(fi.version), _size(fi.size), fi.writer,
                              _age(now - fi.ts) + " ago")
                console.print(f)
            return
        tasks = _run(settings, lambda h: h.store.tasks(tenant))
        t = new_table("task", "streams", "size", "age", "expires in")
        for info in tasks:
            t.add_row(info.name, str(len(info.streams)), _size(info.bytes),
                      _age(now - info.created), _age(max(0.0, info.expires() - now)))
        console.print(t)

    @app.command("cat")
    def cat(ctx: typer.Context,
            target: str = typer.Argument(..., help="TASK/STREAM or TASK/files/NAME"),
            offset: int = typer.Option(0, "--offset", min=0), tenant: str = TENANT) -> None:
        """Print a stream's text from record OFFSET, or a shared file's bytes."""
        task, stream = _target(target)
        name = _file(target)
        if name is not None:
            got = _run(settings_from(ctx), lambda h: h.files.get(tenant, task, name))
            sys.stdout.buffer.write(got.data)
            sys.stdout.flush()
            return
        text = _run(settings_from(ctx), lambda h: h.text(tenant, task, stream, offset))
        sys.stdout.write(text)
        if text and not text.endswith("\n"):
            sys.stdout.write("\n")

    @app.command("tail")
    def tail(ctx: typer.Context, target: str = typer.Argument(..., help="TASK/STREAM"),
             follow: bool = typer.Option(False, "--follow", "-f",
                                         help="Keep printing records as they are written."),
             offset: int = typer.Option(0, "--offset", min=0), tenant: str = TENANT) -> None:
        """Print a stream's text; with -f, follow it live until its end record."""
        task, stream = _target(target)

        async def go(h: Any) -> None:
            if not follow:
                sys.stdout.write(await h.text(tenant, task, stream, offset))
                sys.stdout.flush()
                return
            async for rec in await h.tail(tenant, task, stream, offset):
                if rec.kind in ("tokens", "note"):
                    sys.stdout.write(rec.data)
                    sys.stdout.flush()

        _run(settings_from(ctx), go)
        sys.stdout.write("\n")

    @app.command("put")
    def put(ctx: typer.Context,
            target: str = typer.Argument(..., help="TASK/files/NAME"),
            source: str = typer.Argument(..., help="A file to upload, or - for stdin."),
            version: int = typer.Option(
                -1, "--version", min=-1,
                help="Replace only this version (default: the version read just before)."),
            create: bool = typer.Option(False, "--create",
                                        help="Create only: fail if the file exists."),
            tenant: str = TENANT) -> None:
        """Write a task's shared file (compare-and-set on its version)."""
        task, _ = _target(target)
        name = _file(target)
        if name is None:
            raise typer.BadParameter(f"{target!r}: write TASK/files/NAME")
        data = sys.stdin.buffer.read() if source == "-" else _read_source(source)
        who = Principal(key_id="cli", tenant=tenant, agent=None)

        async def go(h: Any) -> Any:
            expect = 0 if create else version
            if expect < 0:
                cur = await h.store.file_get(tenant, task, name)
                expect = cur.info.version if cur else 0
            return await h.files.put(who, task, name, data, expect=expect)

        info = _run(settings_from(ctx), go)
        console.print(styled(("wrote", "bold"), f" hive://{task}/files/{info.name}@"
                             f"{info.version} ({_size(info.size)})"))

    @app.command("report")
    def report(ctx: typer.Context) -> None:
        """Size and age per tenant, against the quotas."""
        rep = _run(settings_from(ctx), lambda h: h.report(None))
        t = new_table("tenant", "tasks", "streams", "size", "oldest", "expired")
        for tenant, row in sorted(rep["tenants"].items()):
            t.add_row(tenant, str(int(row["tasks"])), str(int(row["streams"])),
                      _size(row["bytes"]), _age(row["oldest_s"]), str(int(row["expired"])))
        console.print(t)
        console.print(f"quota per tenant: {_size(rep['quota_bytes'])}, "
                      f"{rep['quota_streams']} streams")

    @app.command("gc")
    def gc(ctx: typer.Context, dry_run: bool = typer.Option(
            False, "--dry-run", help="Show what would be deleted; delete nothing.")) -> None:
        """Delete every task idle for longer than its TTL ([hive] ttl_s, default 24 h)."""
        rep = _run(settings_from(ctx), lambda h: h.gc(dry_run=dry_run))
        t = new_table("tenant", "task", "size", "idle")
        now = time.time()
        for info in rep.tasks:
            t.add_row(info.tenant, info.name, _size(info.bytes), _age(now - info.last_write))
        if rep.tasks:
            console.print(t)
        verb = "would delete" if dry_run else "deleted"
        console.print(styled((verb, "bold"), f" {len(rep.tasks)} task(s), {_size(rep.bytes)}"))

    return app
