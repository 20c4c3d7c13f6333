"""``keel qa suite build``: a new suite version from the request log or a JSONL export."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from keel.cli.common import console, settings_from, styled
from keel.config import Settings
from keel.errors import InvalidRequest, KeelError


async def build_suite(settings: Settings, *, name: str, from_jsonl: Path | None,
                      from_log: bool, limit: int, per_user: int, max_users: int,
                      dedupe: float, generator: str | None,
                      generator_url: str | None) -> dict[str, Any]:
    from sqlalchemy import select

    from keel.app import open_database
    from keel.metering.request_log import requests as log_table
    from keel.qa import suites
    from keel.qa.builder import SuiteBuilder, read_jsonl_records, request_log_records
    from keel.qa.run_cmd import judge_backend
    from keel.sanitize import Sanitizer
    from keel.sanitize.keys import sanitizer_key

    if (from_jsonl is None) == (not from_log):
        raise InvalidRequest("give exactly one source: --from-jsonl FILE or --from-log")
    if from_jsonl is not None:
        try:
            data = from_jsonl.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InvalidRequest(f"{from_jsonl}: no such file") from None
        records = read_jsonl_records(data, str(from_jsonl))[-limit:]
        source = f"jsonl:{from_jsonl.name}"
    db = open_database(settings)
    try:
        if from_log:
            rows = db.transaction(lambda c: [r._asdict() for r in c.execute(
                select(log_table).where(log_table.c.route == "chat",
                                        log_table.c.status == 200)
                .order_by(log_table.c.ts.desc()).limit(limit))])
            records = request_log_records(rows)
            source = "request_log"
            if not records:
                raise InvalidRequest("the request log has no stored chat request bodies: "
                                     "set [request_log] store_bodies = true and send traffic")
        previous_v = db.transaction(lambda c: suites.versions(c, name))
        previous = (db.transaction(lambda c: suites.prompts_of(c, name, previous_v[0].version))
                    if previous_v else [])
        model = generator or settings.qa.generator or settings.default_model
        sanitizer = Sanitizer(key=sanitizer_key(settings))
        async with contextlib.AsyncExitStack() as stack:
            backend = await stack.enter_async_context(
                judge_backend(settings, model, generator_url))
            from keel.providers.embeddings import MiniLMEmbedder

            embedder = MiniLMEmbedder(settings.model_dir)
            stack.callback(embedder.close)
            builder = SuiteBuilder(sanitizer, backend, model, embedder,
                                   prompts_per_user=per_user, max_users=max_users,
                                   dedupe=dedupe, source=source)
            prompts, report = await builder.build(records, previous)
        if not report.added:
            return {"version": previous_v[0].version if previous_v else None,
                    "changed": False, **report.as_meta()}
        v = db.transaction(lambda c: suites.save(
            c, name, prompts, parent=previous_v[0].version if previous_v else None,
            meta={"source": source, "generator": model, **report.as_meta()}))
        return {"version": v.version, "changed": True, "prompts": v.n_prompts,
                **report.as_meta()}
    finally:
        db.dispose()


def build_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="suite name")],
    from_jsonl: Annotated[Path | None, typer.Option("--from-jsonl", help="log export: "
                                                    "{text, user} per line")] = None,
    from_log: Annotated[bool, typer.Option("--from-log", help="keel's request log")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="most recent records")] = 1000,
    per_user: Annotated[int, typer.Option("--per-user", help="prompts per persona")] = 10,
    max_users: Annotated[int, typer.Option("--max-users", min=1)] = 20,
    dedupe: Annotated[float, typer.Option("--dedupe", help="cosine for near-duplicates")
                      ] = 0.92,
    generator: Annotated[str | None, typer.Option("--generator", help="model (default: "
                                                  "[qa] generator or default_model)")] = None,
    generator_url: Annotated[str | None, typer.Option("--generator-url")] = None,
) -> None:
    """Sanitize real usage, have the generator write personas and prompts (JSON-schema
    constrained), drop near-duplicates, store a new suite version (suites only grow)."""
    from keel.qa.cli import bad_input

    settings = settings_from(ctx)
    try:
        res = asyncio.run(build_suite(
            settings, name=name, from_jsonl=from_jsonl, from_log=from_log, limit=limit,
            per_user=per_user, max_users=max_users, dedupe=dedupe, generator=generator,
            generator_url=generator_url))
    except KeelError as exc:
        raise bad_input(exc.message) from None
    state = "new version" if res["changed"] else "no new prompts"
    console.print(styled((f"{name}@{res['version']}", "bold"), f"  {state}: "
                         f"{res['records']} records, {res['users']} users, "
                         f"{res['generated']} generated, {res['duplicates']} near-duplicates "
                         f"dropped, {res['added']} added, {res['unusable_answers']} "
                         f"unusable answers, generation cost ${res['generation_cost_usd']}"))
