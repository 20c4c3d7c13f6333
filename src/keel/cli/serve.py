"""``keel serve``: run the gateway with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from keel.cli.common import admin_key_path, console, fail, settings_from, styled, write_secret
from keel.config import Settings
from keel.errors import KeelError
from keel.storage.private_files import private_dir


def factory() -> object:
    """uvicorn app factory: every worker builds its own app from the same settings."""
    import sys

    from keel.app import create_app
    from keel.config import load_settings

    try:
        app = create_app(load_settings())
    except KeelError as exc:  # a setting only the build can check (a model name, a URL)
        print(f"error: {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    _tune_runtime()
    return app


def _tune_runtime() -> None:
    """Server processes only, for tail latency:

    * move start-up objects out of the collector's way and collect young objects less
      often, so full collections don't show up as latency spikes;
    * hand the GIL back to the event loop after 0.5 ms instead of 5 ms when a worker thread
      (request-log writes, SQL, tokenisation) is busy.
    """
    import gc
    import sys

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 40)
    sys.setswitchinterval(0.0005)


def prepare(settings: Settings) -> None:
    """One-time setup before workers start: data dir, migrations, a bootstrap admin key."""
    from keel.app import open_database
    from keel.auth.keys import KeyStore

    private_dir(settings.data_dir)
    db = open_database(settings)
    try:
        store = KeyStore(db)
        path = admin_key_path(settings)
        if settings.auth_required and not path.exists() and not store.list():
            new = store.create("default", admin=True, name="bootstrap admin (keel serve)")
            write_secret(path, new.secret)
            console.print(styled("created an admin API key; it is in ", (str(path), "bold"),
                                 " (mode 0600). `keel chat` uses it."))
    finally:
        db.dispose()


def port_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served (in use, not an address here), or None."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot bind to {host}:{port}: {exc.strerror}; check server.host / --host"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (another keel or another "
                        "server); stop it or pick another port with --port")
            return f"cannot bind to {host}:{port}: {exc.strerror}"
    return None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        ctx: typer.Context,
        host: str | None = typer.Option(None, "--host", help="Bind address."),
        port: int | None = typer.Option(None, "--port", "-p", help="Port."),
        workers: int | None = typer.Option(None, "--workers", "-w",
                                           help="Worker processes (state is shared via "
                                                "SQLite/Redis)."),
        log_level: str = typer.Option("info", "--log-level"),
        config: Path | None = typer.Option(None, "--config", "-c", dir_okay=False,
                                           help="Path to keel.toml (as `keel --config`)."),
    ) -> None:
        """Run the OpenAI-compatible gateway."""
        if config is not None:
            ctx.obj = {**(ctx.obj or {}), "config": config}
        overrides = {"server.host": host, "server.port": port, "server.workers": workers}
        settings = settings_from(ctx, strict_env=True, **overrides)
        busy = port_in_use(settings.server.host, settings.server.port)
        if busy is not None:  # before the heavy start-up (migrations, models, DBOS)
            fail(busy)
        try:
            prepare(settings)
        except KeelError as exc:
            fail(exc.message)
        # Workers rebuild settings from the environment: pass flags down that way.
        config = (ctx.obj or {}).get("config")
        if config is not None:
            os.environ["KEEL_CONFIG"] = str(config)
        for key, value in overrides.items():
            if value is not None:
                os.environ["KEEL_" + key.upper().replace(".", "__")] = str(value)

        import uvicorn

        s = settings.server
        console.print(f"starting the keel gateway on http://{s.host}:{s.port} "
                      f"(workers={s.workers}, console: /console, API: /v1)")
        uvicorn.run(
            "keel.cli.serve:factory", factory=True, host=s.host, port=s.port,
            workers=s.workers if s.workers > 1 else None, loop="uvloop",
            http="keel.gateway.http_protocol:BoundedHttpToolsProtocol",
            access_log=s.access_log, log_level=log_level, timeout_graceful_shutdown=10,
        )
