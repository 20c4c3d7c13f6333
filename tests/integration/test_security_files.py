"""keel's data files are private: every file under the data dir 0600, every dir 0700.

The gateway runs with its default embedded stores (SQLite keel.db and kv.db, DBOS on
dbos.sqlite, usearch vectors) under a permissive umask (022), serves a logged chat request,
a console sign-in and an approval, and then every path under the data dir is checked.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import numpy as np
import pytest

from keel.config import Settings
from keel.gateway.services import Services
from keel.storage.sql import Database
from keel.storage.vectors import open_vector_index


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what most shells have: files 0644, dirs 0755 unless keel says
    yield
    os.umask(old)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.tools.enabled = False
    return settings


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


async def test_every_data_file_is_private(
    client: httpx.AsyncClient, services: Services, settings: Settings, admin_key: str,
    user_key: str,
) -> None:
    auth = {"Authorization": f"Bearer {user_key}"}
    r = await client.post("/v1/chat/completions", headers=auth, json={
        "model": "fake-gpt", "messages": [{"role": "user", "content": "capital of France?"}]})
    assert r.status_code == 200
    r = await client.post("/console/login", content=urlencode({"api_key": admin_key}),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303
    r = await client.post("/v1/approvals", headers=auth,
                          json={"action": "pay", "risk_level": "HIGH"})
    assert r.status_code == 201
    vectors = open_vector_index("embedded://", "rag-help", settings.data_dir)
    await vectors.create(4)
    await vectors.upsert(["a"], np.ones((1, 4), dtype=np.float32), [{"text": "private"}])
    await vectors.aclose()
    await services.request_log.flush()

    found = modes(settings.data_dir)
    for name in ("keel.db", "kv.db", "dbos.sqlite", "keel.db-wal", "vectors"):
        assert name in found, sorted(found)
    loose = {name: oct(mode) for name, mode in found.items()
             if mode & 0o077 or (Path(settings.data_dir / name).is_dir() and mode != 0o700)}
    assert loose == {}, f"readable by others: {loose}"


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "old" / "keel.db"
    path.parent.mkdir()
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)  # what older versions left behind
    db = Database(f"sqlite:///{path}")
    db.transaction(lambda c: c.exec_driver_sql("CREATE TABLE t (x INTEGER)"))
    db.dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
