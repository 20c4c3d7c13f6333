"""Clone bench: a 1 GB database cloned for a remediation run, SQLite and PostgreSQL.

* SQLite: keel's clone, both methods (``copy``: a hot copy under a read snapshot with
  ``cp --reflink=auto``; ``backup``: SQLite's online backup API) while a writer keeps
  committing (its slowest commit is reported: cloning must not block production), against
  the raw baselines in the same run: a plain file copy (``shutil.copyfile``: not safe on a
  live database) and ``cp --reflink=auto`` alone.
* PostgreSQL 15 (started as a process with the test suite's helpers): keel's clone,
  ``CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY``, against the default strategy
  (``WAL_LOG``) in the same run.

Usage: ``.venv/bin/python bench/remediation_clone.py [--gb 1.0] [--no-postgres]``
Writes ``bench/results/remediation_clone.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from keel.remediation.clone import PostgresCloner, SqliteCloner

console = Console()
ROW_BYTES = 1000


def make_sqlite(path: Path, gb: float) -> int:
    rows = int(gb * 1024**3 / (ROW_BYTES + 30))
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, payload BLOB)")
    batch = 50_000
    with Progress(console=console, transient=True) as p:
        task = p.add_task("building the SQLite database", total=rows)
        done = 0
        while done < rows:
            n = min(batch, rows - done)
            con.execute("INSERT INTO orders (payload) WITH RECURSIVE c(x) AS (SELECT 1 UNION "
                        "ALL SELECT x + 1 FROM c WHERE x < ?) SELECT randomblob(?) FROM c",
                        (n, ROW_BYTES))
            con.commit()
            done += n
            p.update(task, completed=done)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path.stat().st_size


async def sqlite_bench(root: Path, gb: float) -> dict[str, Any]:
    src = root / "prod.db"
    size = make_sqlite(src, gb)
    live = sqlite3.connect(src)  # a live reader/writer stays connected, as in production
    live.execute("SELECT count(*) FROM orders").fetchone()
    out: dict[str, Any] = {"bytes": size}
    t0 = time.perf_counter()
    shutil.copyfile(src, root / "plain.db")
    out["baseline_plain_copy_s"] = time.perf_counter() - t0
    (root / "plain.db").unlink()
    t0 = time.perf_counter()
    subprocess.run(["cp", "--reflink=auto", str(src), str(root / "reflink.db")], check=True)
    out["baseline_cp_reflink_auto_s"] = time.perf_counter() - t0
    (root / "reflink.db").unlink()
    # a writer keeps committing during the clone: it must never be blocked
    writes = {"n": 0, "max_s": 0.0}
    stop = asyncio.Event()

    def writer() -> None:
        w = sqlite3.connect(src, timeout=30)
        while not stop.is_set():
            t = time.perf_counter()
            w.execute("INSERT INTO orders (payload) VALUES (randomblob(1000))")
            w.commit()
            writes["n"] += 1
            writes["max_s"] = max(writes["max_s"], time.perf_counter() - t)
            time.sleep(0.005)
        w.close()

    for method in ("copy", "backup"):
        writes.update(n=0, max_s=0.0)
        stop.clear()
        wt = asyncio.create_task(asyncio.to_thread(writer))
        await asyncio.sleep(0.2)
        cloner = SqliteCloner(f"sqlite:///{src}", root / "clones", method=method)
        c = await cloner.clone(f"bench_{method}")
        stop.set()
        await wt
        out[f"keel_{method}_s"] = c.seconds
        out[f"keel_{method}_writes_during"] = writes["n"]
        out[f"keel_{method}_slowest_write_s"] = round(writes["max_s"], 4)
        check = sqlite3.connect(c.url.removeprefix("sqlite:///"))
        out[f"keel_{method}_integrity"] = check.execute("PRAGMA quick_check").fetchone()[0]
        check.close()
        await cloner.drop(c)
    # the file is in the page cache by now: the plain copy again, for a like-for-like ratio
    t0 = time.perf_counter()
    shutil.copyfile(src, root / "plain.db")
    out["baseline_plain_copy_warm_s"] = time.perf_counter() - t0
    (root / "plain.db").unlink()
    live.close()
    return out


async def postgres_bench(gb: float) -> dict[str, Any]:
    import psycopg

    from services import running_postgres

    out: dict[str, Any] = {}
    with running_postgres() as server:
        admin = server.url("postgres")
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute("CREATE DATABASE prod")
        rows = int(gb * 1024**3 / 1100)
        with psycopg.connect(server.url("prod"), autocommit=True) as c, \
                Progress(console=console, transient=True) as p:
            task = p.add_task("building the PostgreSQL database", total=rows)
            c.execute("CREATE TABLE orders (id bigint PRIMARY KEY, payload text)")
            step = 100_000
            for lo in range(1, rows + 1, step):
                hi = min(rows, lo + step - 1)
                c.execute("INSERT INTO orders SELECT g, repeat(md5(g::text), 31) FROM "
                          "generate_series(%s, %s) g", (lo, hi))
                p.update(task, completed=hi)
            c.execute("CHECKPOINT")
            out["bytes"] = c.execute("SELECT pg_database_size('prod')").fetchone()[0]
        with psycopg.connect(admin, autocommit=True) as c:
            t0 = time.perf_counter()
            c.execute("CREATE DATABASE baseline TEMPLATE prod STRATEGY WAL_LOG")
            out["baseline_template_wal_log_s"] = time.perf_counter() - t0
            c.execute("DROP DATABASE baseline")
        clone = await PostgresCloner(server.url("prod")).clone("bench_clone")
        out["keel_template_file_copy_s"] = clone.seconds
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--no-postgres", action="store_true")
    a = ap.parse_args()
    result: dict[str, Any] = {
        "config": f"{a.gb} GB database; 2-core VM shared with other jobs (numbers taken "
                  "under load); ext4-like local disk"}
    with tempfile.TemporaryDirectory(prefix="keel-clone-bench-") as d:
        result["sqlite"] = await sqlite_bench(Path(d), a.gb)
    console.print("sqlite", result["sqlite"], markup=False)
    if not a.no_postgres:
        try:
            result["postgres"] = await postgres_bench(a.gb)
        except BaseException as exc:  # no server binaries: say so in the result
            result["postgres"] = {"error": f"{type(exc).__name__}: {exc}"}
        console.print("postgres", result["postgres"], markup=False)
    out = Path(__file__).resolve().parent / "results" / "remediation_clone.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
