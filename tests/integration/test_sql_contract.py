"""Relational storage contract: the same tests against SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from keel.app import all_migrations, open_database
from keel.auth.keys import KeyStore
from keel.config import RequestLogSettings, load_settings
from keel.errors import AuthenticationError, ConfigError, NotFound
from keel.gateway.context import Principal, RequestContext
from keel.metering.request_log import (
    LogFilter,
    RequestLogWriter,
    query_requests,
    spend_by_hour,
    spend_summary,
)
from keel.storage.migrations import migrate
from keel.storage.sql import Database, engine_url, redact


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keel.db'}"
    else:
        yield request.getfixturevalue("postgres_clean_url")


@pytest.fixture
def db(db_url: str, tmp_path: Path) -> Iterator[Database]:
    settings = load_settings(None, data_dir=str(tmp_path), database_url=db_url)
    d = open_database(settings)
    yield d
    d.dispose()


def test_migrations_are_idempotent(db: Database) -> None:
    assert migrate(db, all_migrations()) == []  # already applied by open_database


def test_keys_hashed_resolve_and_revoke(db: Database) -> None:
    store = KeyStore(db, cache_ttl_s=0)
    new = store.create("acme", agent="bot", admin=True, name="ci")
    p = asyncio.run(store.resolve(new.secret))
    assert p == Principal(key_id=new.info.id, tenant="acme", agent="bot", admin=True)
    # the secret itself is nowhere in the database
    from sqlalchemy import text

    dump = db.transaction(lambda c: [tuple(r) for r in c.execute(text("select * from api_keys"))])
    assert new.secret not in repr(dump)
    store.revoke(new.info.id)
    with pytest.raises(AuthenticationError):
        asyncio.run(store.resolve(new.secret))
    with pytest.raises(NotFound):
        store.revoke(new.info.id)
    assert store.list() == [] and len(store.list(include_revoked=True)) == 1


def _ctx(i: int, tenant: str, model_name: str = "gemma-3-270m") -> RequestContext:
    settings = load_settings(None)
    spec = next(m for m in settings.model_table() if m.name == model_name)
    ctx = RequestContext(id=f"req_{i:04d}", route="chat",
                         body={"model": spec.name, "messages": [{"role": "user",
                                                                 "content": f"q{i}"}]},
                         model=spec, principal=Principal("k", tenant), client_ip="127.0.0.1",
                         headers={})
    ctx.usage.prompt_tokens, ctx.usage.completion_tokens = 100, 50
    ctx.cost_usd = spec.cost_usd(100, 50)
    ctx.output_text = f"a{i}"
    return ctx


async def test_request_log_batches_and_queries(db: Database) -> None:
    writer = RequestLogWriter(db, RequestLogSettings(batch_size=50, flush_interval_s=0.05))
    writer.start()
    for i in range(120):
        writer.submit(_ctx(i, "acme" if i % 3 else "beta"))
    await asyncio.sleep(0.3)
    await writer.aclose()
    assert writer.stats.written == 120 and writer.stats.dropped == 0
    rows = await db.run(lambda c: query_requests(c, LogFilter(limit=1000)))
    assert len(rows) == 120
    beta = await db.run(lambda c: query_requests(c, LogFilter(tenant="beta", limit=1000)))
    assert len(beta) == 40
    found = await db.run(lambda c: query_requests(c, LogFilter(search="q77")))
    assert [r["id"] for r in found] == ["req_0077"]
    by_tenant = await db.run(lambda c: spend_summary(c, LogFilter(), "tenant"))
    assert {r["key"]: r["requests"] for r in by_tenant} == {"acme": 80, "beta": 40}
    hourly = await db.run(lambda c: spend_by_hour(c, LogFilter()))
    assert sum(h["requests"] for h in hourly) == 120
    assert hourly[-1]["hour"] <= time.time()


async def test_request_log_full_queue_drops_without_blocking(db: Database) -> None:
    writer = RequestLogWriter(db, RequestLogSettings(queue_limit=5))
    writer.start()
    for i in range(10):
        writer.submit(_ctx(i, "acme"))
    assert writer.stats.dropped == 5
    await writer.aclose()


def test_urls_and_redaction() -> None:
    assert engine_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert "p@" not in redact("postgresql://u:secretpw@h:5432/db")
    assert "secretpw" not in redact("postgresql://u:secretpw@h:5432/db")
    with pytest.raises(ConfigError, match="sqlite:///"):
        engine_url("mysql://u:secretpw@h/db")
    try:
        engine_url("mysql://u:secretpw@h/db")
    except ConfigError as exc:
        assert "secretpw" not in exc.message
