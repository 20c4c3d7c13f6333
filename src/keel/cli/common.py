"""Shared CLI plumbing: settings from the global --config option, errors, the admin key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from keel.config import Settings, load_settings
from keel.errors import KeelError
from keel.storage.private_files import private_dir

# Markup off: text from users, configs and upstreams ("add it to [[models]]", "[x]") is
# printed as it is, tables included. Styling goes through :func:`styled`.
# Piped output is not cut to 80 columns: the width is unlimited unless COLUMNS says so.
_PIPE_WIDTH = None if os.isatty(1) or os.environ.get("COLUMNS") else 100_000
console = Console(markup=False, highlight=False, emoji=False, width=_PIPE_WIDTH)
err_console = Console(stderr=True, markup=False, highlight=False, emoji=False)


def new_table(*columns: str, **kw: Any) -> Table:
    """A table whose cells wrap (fold) instead of ending in "…": ids stay whole."""
    t = Table(**kw)
    for name in columns:
        t.add_column(name, overflow="fold")
    return t


def styled(*parts: str | tuple[str, str]) -> Text:
    """Literal text with styled pieces: ``styled(("created", "green"), " key ", name)``."""
    return Text.assemble(*parts)

ADMIN_KEY_FILE = "admin.key"


def settings_from(ctx: typer.Context, *, strict_env: bool = False,
                  **overrides: Any) -> Settings:
    """Settings for a command. ``${VAR}`` references that are unset are left out unless
    ``strict_env`` (commands that use them say so: serve, wallet): an unrelated command
    never fails for a secret it does not need."""
    config: Path | None = (ctx.obj or {}).get("config") if ctx.obj is not None else None
    try:
        return load_settings(config, strict_env=strict_env, **overrides)
    except KeelError as exc:
        fail(exc.message)


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(styled(("error:", "bold red"), " ", message))
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


def gateway_client(settings: Settings, url: str | None = None, *,
                   timeout: float = 30.0) -> httpx.Client:
    """An HTTP client for the running gateway: ``url``, else $KEEL_URL, else the configured
    host and port; authenticated with :func:`read_local_key`."""
    base = url or os.environ.get("KEEL_URL") or \
        f"http://{settings.server.host}:{settings.server.port}"
    key = read_local_key(settings)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base, headers=headers,
                        timeout=httpx.Timeout(timeout, connect=5))


def checked(r: httpx.Response) -> httpx.Response:
    """``r``, or exit with the gateway's error message when it is a 4xx/5xx."""
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text[:500]
        fail(f"{r.status_code}: {msg}")
    return r


def gateway_call(c: httpx.Client, method: str, path: str, *, hint: str = "",
                 **kw: Any) -> httpx.Response:
    """One request to the gateway; a clear exit when none answers or it refuses."""
    try:
        r = c.request(method, path, **kw)
    except httpx.HTTPError:
        fail(f"no keel gateway answers at {c.base_url}: start one with `keel serve` (or set "
             f"--url / KEEL_URL){hint}")
    return checked(r)


def write_secret(path: Path, secret: str) -> None:
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
