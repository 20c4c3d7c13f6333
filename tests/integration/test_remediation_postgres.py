"""PostgreSQL clones for remediation runs, against a real server (the suite's fixture)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from keel.remediation.clone import CloneFailed, CloneTargetExists, PostgresCloner


async def test_template_clone_copies_data_and_refuses_existing_targets(
        postgres_clean_url: str) -> None:
    with psycopg.connect(postgres_clean_url, autocommit=True) as c:
        c.execute("CREATE TABLE discounts (code text PRIMARY KEY, amount_off_cents int)")
        c.execute("INSERT INTO discounts VALUES ('SAVE10', NULL), ('FIVEOFF', 500)")
    cloner = PostgresCloner(postgres_clean_url)
    name = f"clone_{uuid.uuid4().hex[:12]}"
    clone = await cloner.clone(name)
    try:
        assert clone.method == "postgres-template-file-copy" and clone.bytes
        assert clone.url == cloner.url_for(name)
        with psycopg.connect(clone.url) as c:
            rows = c.execute("SELECT code, amount_off_cents FROM discounts ORDER BY code")
            assert rows.fetchall() == [("FIVEOFF", 500), ("SAVE10", None)]
        with pytest.raises(CloneTargetExists):
            await cloner.clone(name)
    finally:
        await cloner.drop(clone)
    with psycopg.connect(postgres_clean_url) as busy:  # a live session on the source
        busy.execute("SELECT 1")
        with pytest.raises(CloneFailed, match="other sessions"):
            await cloner.clone(f"clone_{uuid.uuid4().hex[:12]}")
