"""Shared CLI plumbing: settings from the global --config option, errors, the admin key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from keel.config import Settings, load_settings
from keel.errors import KeelError

console = Console()
err_console = Console(stderr=True)

ADMIN_KEY_FILE = "admin.key"


def settings_from(ctx: typer.Context, **overrides: Any) -> Settings:
    config: Path | None = (ctx.obj or {}).get("config") if ctx.obj is not None else None
    try:
        return load_settings(config, **overrides)
    except KeelError as exc:
        fail(exc.message)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print("[bold red]error:[/] " + escape(message))  # user text, not markup
    raise typer.Exit(code)


def admin_key_path(settings: Settings) -> Path:
    return settings.data_dir / ADMIN_KEY_FILE


def read_local_key(settings: Settings) -> str | None:
    """The API key for CLI calls: $KEEL_API_KEY, else the bootstrap admin key file."""
    env = os.environ.get("KEEL_API_KEY")
    if env:
        return env
    path = admin_key_path(settings)
    return path.read_text().strip() if path.exists() else None


def write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
