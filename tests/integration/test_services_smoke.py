"""The test harness starts real servers: PostgreSQL answers SQL, Valkey answers search."""

from __future__ import annotations

import psycopg
import redis
from redis.commands.search.field import TextField
from redis.commands.search.index_definition import IndexDefinition

from services import ft_list


def test_postgres_answers_select_1(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("select 1").fetchone()
    assert row == (1,)


def test_postgres_clean_url_is_a_fresh_database(postgres_url: str, postgres_clean_url: str) -> None:
    assert postgres_clean_url != postgres_url
    with psycopg.connect(postgres_clean_url) as conn:
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (42)")
        assert conn.execute("select x from t").fetchone() == (42,)
        db = conn.execute("select current_database()").fetchone()
    assert db is not None
    assert str(db[0]).startswith("test_")


def test_redis_answers_ping_and_ft_list(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.ping() is True
        assert ft_list(client) is not None
    finally:
        client.close()


def test_redis_clean_url_starts_empty_and_drops_indexes(redis_clean_url: str) -> None:
    client = redis.Redis.from_url(redis_clean_url, decode_responses=True)
    try:
        assert client.dbsize() == 0
        assert ft_list(client) == []
        client.ft("smoke_idx").create_index(
            [TextField("t")],
            definition=IndexDefinition(prefix=["smoke:"]),  # type: ignore[no-untyped-call]
        )
        client.hset("smoke:1", mapping={"t": "hello world"})
        assert ft_list(client) == ["smoke_idx"]
        assert client.ft("smoke_idx").search("hello").total == 1
    finally:
        client.close()


def test_redis_clean_url_flushed_between_tests(redis_clean_url: str) -> None:
    client = redis.Redis.from_url(redis_clean_url, decode_responses=True)
    try:
        assert client.dbsize() == 0
        assert ft_list(client) == []
    finally:
        client.close()
