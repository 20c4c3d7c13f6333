"""Versioned policy store in SQL (SQLite or PostgreSQL).

Every applied text is kept as a numbered version; activations form a stack, so
``rollback`` returns to whatever was active before the current version (not merely the
previous number). Each operation is one transaction: a failed apply changes nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
    update,
)

from keel.errors import NotFound
from keel.storage.migrations import Migration
from keel.storage.sql import Database

meta = MetaData()
policy_versions = Table(
    "policy_versions",
    meta,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("note", String(500)),
    Column("created_at", Float, nullable=False),
)
policy_activations = Table(
    "policy_activations",
    meta,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("version", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("rolled_back", Boolean, nullable=False, default=False),
)

MIGRATIONS = [
    Migration("policy/0001_versions",
              lambda c: meta.create_all(c, tables=[policy_versions, policy_activations])),
]


@dataclass(frozen=True)
class StoredPolicy:
    version: int
    text: str
    sha256: str
    note: str | None
    created_at: float
    active: bool = False


class PolicyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads ----------------------------------------------------------------------------

    @staticmethod
    def _active_version(c: Connection) -> int | None:
        row = c.execute(
            select(policy_activations.c.version)
            .where(policy_activations.c.rolled_back.is_(False))
            .order_by(policy_activations.c.seq.desc()).limit(1)
        ).first()
        return int(row.version) if row else None

    def active_version(self) -> int | None:
        return self.db.transaction(self._active_version)

    def active(self) -> StoredPolicy | None:
        def run(c: Connection) -> StoredPolicy | None:
            v = self._active_version(c)
            return None if v is None else _get(c, v, active=True)

        return self.db.transaction(run)

    def get(self, version: int) -> StoredPolicy:
        def run(c: Connection) -> StoredPolicy | None:
            return _get(c, version, active=self._active_version(c) == version)

        found = self.db.transaction(run)
        if found is None:
            raise NotFound(f"no policy version {version} (see `keel policy history`)")
        return found

    def history(self, limit: int = 50) -> list[StoredPolicy]:
        def run(c: Connection) -> list[StoredPolicy]:
            active = self._active_version(c)
            rows = c.execute(select(policy_versions)
                             .order_by(policy_versions.c.version.desc()).limit(limit))
            return [StoredPolicy(r.version, r.text, r.sha256, r.note, r.created_at,
                                 r.version == active) for r in rows]

        return self.db.transaction(run)

    # -- writes ---------------------------------------------------------------------------

    def apply(self, text: str, *, validate: Callable[[str], object], note: str | None = None
              ) -> StoredPolicy:
        """Validate (raising with Cedar's message), then store and activate a new version."""
        validate(text)
        now = time.time()
        sha = hashlib.sha256(text.encode()).hexdigest()

        def run(c: Connection) -> StoredPolicy:
            top = c.execute(select(func.max(policy_versions.c.version))).scalar()
            version = int(top or 0) + 1
            c.execute(policy_versions.insert().values(
                version=version, text=text, sha256=sha, note=note, created_at=now))
            c.execute(policy_activations.insert().values(version=version, at=now,
                                                         rolled_back=False))
            return StoredPolicy(version, text, sha, note, now, True)

        return self.db.transaction(run)

    def rollback(self) -> StoredPolicy:
        """Re-activate the version that was active before the current one."""

        def run(c: Connection) -> StoredPolicy:
            live = c.execute(
                select(policy_activations.c.seq)
                .where(policy_activations.c.rolled_back.is_(False))
                .order_by(policy_activations.c.seq.desc()).limit(2)
            ).scalars().all()
            if len(live) < 2:
                raise NotFound("there is no earlier policy version to roll back to")
            c.execute(update(policy_activations).where(policy_activations.c.seq == live[0])
                      .values(rolled_back=True))
            version = self._active_version(c)
            assert version is not None
            found = _get(c, version, active=True)
            assert found is not None
            return found

        return self.db.transaction(run)


def _get(c: Connection, version: int, *, active: bool) -> StoredPolicy | None:
    r = c.execute(select(policy_versions).where(policy_versions.c.version == version)).first()
    if r is None:
        return None
    return StoredPolicy(r.version, r.text, r.sha256, r.note, r.created_at, active)
