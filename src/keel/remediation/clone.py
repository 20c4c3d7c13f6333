"""Database clones for a remediation run, behind one port chosen by the source URL.

- ``sqlite:///path``: a hot copy under a read snapshot into ``<work_dir>/clones/NAME.db``
  (copy-on-write with reflinks; see :class:`SqliteCloner`), or SQLite's backup API.
- ``postgresql://``: ``CREATE DATABASE "NAME" TEMPLATE "SRC" STRATEGY FILE_COPY`` (PG 15+;
  the file-level copy, much faster than WAL_LOG for large databases). PostgreSQL refuses a
  template that has other sessions: stop or pause the writers, or clone from a replica.
- ``aurora://CLUSTER?region=R&instance_class=db.r6g.large``: an Aurora copy-on-write clone.
- ``neon://PROJECT_ID?parent=BRANCH_ID``: a Neon branch.

The Aurora and Neon adapters make the documented API calls listed on their classes; they
have not been run against real cloud accounts from this repository's tests (they need
credentials and cost money), and they say so in their errors instead of pretending.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit, urlunsplit

from keel.errors import ConfigError, InvalidRequest, KeelError

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class CloneTargetExists(KeelError):
    http_status = 409
    type = "invalid_request_error"
    code = "clone_target_exists"


class CloneFailed(KeelError):
    http_status = 502
    type = "api_error"
    code = "clone_failed"


@dataclass(frozen=True)
class Clone:
    url: str  # where the sandbox reaches the copy
    name: str
    method: str
    seconds: float
    bytes: int | None = None

    def public(self) -> dict[str, Any]:
        from keel.storage.sql import redact

        return {"url": redact(self.url), "name": self.name, "method": self.method,
                "seconds": round(self.seconds, 4), "bytes": self.bytes}


class Cloner(Protocol):
    async def clone(self, name: str) -> Clone: ...
    async def drop(self, clone: Clone) -> None: ...


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidRequest("clone names are lowercase letters, digits and _ (at most 63), "
                             f"starting with a letter; got {name!r}", param="name")
    return name


class SqliteCloner:
    """``method="copy"`` (default): a hot copy. A read transaction pins a snapshot (in WAL
    mode the checkpointer cannot move frames past it into the main file, and the WAL
    cannot restart; in rollback mode writers cannot commit), the main file is copied
    (``cp --reflink=auto``: copy-on-write where the filesystem has it), then the WAL; the
    clone opens at the snapshot or a later committed state (a torn last frame fails its
    checksum and is ignored). Writers are never blocked. ``method="backup"``: SQLite's
    online backup API (page by page through the pager; about 4x slower here)."""

    def __init__(self, source_url: str, clones_dir: Path, method: str = "copy") -> None:
        self.source = Path(source_url.removeprefix("sqlite:///"))
        self.dir = clones_dir
        self.method = method

    def _hot_copy(self, target: Path) -> None:
        src = sqlite3.connect(f"file:{self.source}?mode=ro", uri=True,
                              isolation_level=None)
        try:
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()  # pins the snapshot
            for suffix in ("", "-wal"):
                f = self.source.with_name(self.source.name + suffix)
                if f.exists():
                    subprocess.run(["cp", "--reflink=auto", str(f),
                                    str(target.with_name(target.name + suffix))],
                                   check=True, capture_output=True)
            src.execute("COMMIT")
        finally:
            src.close()
        dst = sqlite3.connect(target)
        try:  # fold the WAL into the clone and prove it opens
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            dst.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            dst.close()

    def url_for(self, name: str) -> str:
        return f"sqlite:///{self.dir / f'{check_name(name)}.db'}"

    async def clone(self, name: str) -> Clone:
        target = self.dir / f"{check_name(name)}.db"
        if not self.source.exists():
            raise CloneFailed(f"the source database {self.source} does not exist")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

        def run() -> Clone:
            t0 = time.perf_counter()
            try:  # O_EXCL: an existing target is never overwritten
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                raise CloneTargetExists(f"clone target {target} already exists; pick another "
                                        "name or drop it first") from None
            try:
                if self.method == "backup":
                    src = sqlite3.connect(f"file:{self.source}?mode=ro", uri=True)
                    dst = sqlite3.connect(target)
                    try:
                        src.backup(dst, pages=-1)  # one pass: a consistent snapshot
                    finally:
                        dst.close()
                        src.close()
                else:
                    self._hot_copy(target)
            except (sqlite3.Error, subprocess.CalledProcessError, OSError) as exc:
                for p in (target, target.with_name(target.name + "-wal")):
                    p.unlink(missing_ok=True)
                raise CloneFailed(f"cloning {self.source.name} failed: {exc}") from None
            return Clone(f"sqlite:///{target}", name, f"sqlite-{self.method}",
                         time.perf_counter() - t0, target.stat().st_size)

        return await asyncio.to_thread(run)

    async def drop(self, clone: Clone) -> None:
        path = Path(clone.url.removeprefix("sqlite:///"))
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)


class PostgresCloner:
    def __init__(self, source_url: str) -> None:
        self.source_url = source_url
        parts = urlsplit(source_url)
        self.source_db = parts.path.lstrip("/")
        self.admin_url = urlunsplit(parts._replace(path="/postgres"))

    def url_for(self, name: str) -> str:
        return self._url(check_name(name))

    def _url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.source_url)._replace(path="/" + name))

    async def clone(self, name: str) -> Clone:
        check_name(name)

        def run() -> Clone:
            import psycopg
            from psycopg import errors, sql

            t0 = time.perf_counter()
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY")
                                 .format(sql.Identifier(name), sql.Identifier(self.source_db)))
                except errors.DuplicateDatabase:
                    raise CloneTargetExists(f"database {name!r} already exists; pick another "
                                            "name or drop it first") from None
                except errors.ObjectInUse:
                    raise CloneFailed(
                        f"PostgreSQL cannot use {self.source_db!r} as a template while other "
                        "sessions are connected to it; pause its writers or clone a replica "
                        "(or use the aurora:// / neon:// adapters)") from None
                size = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
            return Clone(self._url(name), name, "postgres-template-file-copy",
                         time.perf_counter() - t0, int(size[0]) if size else None)

        return await asyncio.to_thread(run)

    async def drop(self, clone: Clone) -> None:
        def run() -> None:
            import psycopg
            from psycopg import sql

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                             .format(sql.Identifier(clone.name)))

        await asyncio.to_thread(run)


class AuroraCloner:
    """Aurora copy-on-write clone through boto3 (``pip install boto3``; AWS credentials from
    the usual chain). Calls, in order:

    1. ``rds.restore_db_cluster_to_point_in_time(SourceDBClusterIdentifier=CLUSTER,
       DBClusterIdentifier=NAME, RestoreType="copy-on-write", UseLatestRestorableTime=True)``
    2. ``rds.create_db_instance(DBInstanceIdentifier=NAME + "-1", DBClusterIdentifier=NAME,
       DBInstanceClass=instance_class, Engine=<the source cluster's engine>)``
    3. waiter ``db_instance_available``, then ``describe_db_clusters`` for the endpoint.

    ``drop``: ``delete_db_instance(SkipFinalSnapshot=True)`` and ``delete_db_cluster``.
    Not exercised against a real AWS account by keel's tests.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        q = parse_qs(parts.query)
        self.cluster = parts.netloc
        self.region = (q.get("region") or [""])[0]
        self.instance_class = (q.get("instance_class") or ["db.r6g.large"])[0]
        self.db_user = (q.get("user") or ["postgres"])[0]

    def _client(self) -> Any:
        try:
            import boto3  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("the aurora:// clone adapter needs boto3 (pip install boto3) "
                              "and AWS credentials") from None
        return boto3.client("rds", region_name=self.region or None)

    async def clone(self, name: str) -> Clone:
        target = check_name(name).replace("_", "-")

        def run() -> Clone:
            rds = self._client()
            t0 = time.perf_counter()
            src = rds.describe_db_clusters(DBClusterIdentifier=self.cluster)["DBClusters"][0]
            try:
                rds.restore_db_cluster_to_point_in_time(
                    SourceDBClusterIdentifier=self.cluster, DBClusterIdentifier=target,
                    RestoreType="copy-on-write", UseLatestRestorableTime=True)
            except rds.exceptions.DBClusterAlreadyExistsFault:
                raise CloneTargetExists(f"Aurora cluster {target!r} already exists") from None
            rds.create_db_instance(DBInstanceIdentifier=target + "-1",
                                   DBClusterIdentifier=target,
                                   DBInstanceClass=self.instance_class, Engine=src["Engine"])
            rds.get_waiter("db_instance_available").wait(DBInstanceIdentifier=target + "-1")
            c = rds.describe_db_clusters(DBClusterIdentifier=target)["DBClusters"][0]
            url = (f"postgresql://{self.db_user}@{c['Endpoint']}:{c['Port']}/"
                   f"{src.get('DatabaseName') or 'postgres'}")
            return Clone(url, target, "aurora-copy-on-write", time.perf_counter() - t0)

        return await asyncio.to_thread(run)

    async def drop(self, clone: Clone) -> None:
        def run() -> None:
            rds = self._client()
            rds.delete_db_instance(DBInstanceIdentifier=clone.name + "-1",
                                   SkipFinalSnapshot=True)
            rds.delete_db_cluster(DBClusterIdentifier=clone.name, SkipFinalSnapshot=True)

        await asyncio.to_thread(run)


class NeonCloner:
    """A Neon branch through the Neon API v2 (key in ``NEON_API_KEY``). Calls:

    - ``POST https://console.neon.tech/api/v2/projects/{project_id}/branches`` with
      ``{"branch": {"name": NAME, "parent_id": PARENT}, "endpoints": [{"type":
      "read_write"}]}``; the answer's ``connection_uris[0].connection_uri`` is the clone.
    - ``drop``: ``DELETE .../projects/{project_id}/branches/{branch_id}``.

    Not exercised against a real Neon account by keel's tests.
    """

    API = "https://console.neon.tech/api/v2"

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.project = parts.netloc
        parents = parse_qs(parts.query).get("parent") or []
        self.parent: str | None = parents[0] if parents else None

    def _key(self) -> str:
        key = os.environ.get("NEON_API_KEY")
        if not key:
            raise ConfigError("the neon:// clone adapter needs NEON_API_KEY in the environment")
        return key

    async def clone(self, name: str) -> Clone:
        import httpx

        check_name(name)
        branch: dict[str, Any] = {"name": name}
        if self.parent:
            branch["parent_id"] = self.parent
        t0 = time.perf_counter()
        async with httpx.AsyncClient(timeout=60) as c:
            r = await c.post(f"{self.API}/projects/{self.project}/branches",
                             headers={"authorization": f"Bearer {self._key()}"},
                             json={"branch": branch, "endpoints": [{"type": "read_write"}]})
        if r.status_code == 409:
            raise CloneTargetExists(f"Neon branch {name!r} already exists")
        if r.status_code >= 300:
            raise CloneFailed(f"Neon API answered HTTP {r.status_code}")
        data = r.json()
        return Clone(data["connection_uris"][0]["connection_uri"], data["branch"]["id"],
                     "neon-branch", time.perf_counter() - t0)

    async def drop(self, clone: Clone) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=60) as c:
            await c.delete(f"{self.API}/projects/{self.project}/branches/{clone.name}",
                           headers={"authorization": f"Bearer {self._key()}"})


def cloner_for(url: str, clones_dir: Path) -> Cloner:
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        return SqliteCloner(url, clones_dir)
    if scheme in ("postgresql", "postgres"):
        return PostgresCloner(url.replace("postgres://", "postgresql://", 1))
    if scheme == "aurora":
        return AuroraCloner(url)
    if scheme == "neon":
        return NeonCloner(url)
    raise ConfigError(f"no clone adapter for {scheme}:// database URLs; use sqlite:///, "
                      "postgresql://, aurora:// or neon://")
