"""What an incident carries for the fixer and the human: the stack trace from the service's
log, the commits and diff since the last good deploy, the database schema, the source of
the files in the trace, and sample failing requests."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

from keel.remediation.patching import git
from keel.remediation.settings import ServiceSpec

LOG_TAIL_BYTES = 256 * 1024
MAX_DIFF = 20_000
MAX_FILE = 12_000
TRACE_FILE = re.compile(r'File "([^"]+)", line (\d+)')


def last_traceback(log_path: str) -> str:
    """The last ``Traceback ...`` block in the log's tail (with the line that logged it)."""
    p = Path(log_path)
    if not log_path or not p.is_file():
        return ""
    with p.open("rb") as f:
        f.seek(max(0, p.stat().st_size - LOG_TAIL_BYTES))
        lines = f.read().decode(errors="replace").splitlines()
    start = max((i for i, ln in enumerate(lines) if ln.startswith("Traceback")), default=None)
    if start is None:
        return ""
    end = start + 1
    while end < len(lines) and lines[end].startswith((" ", "\t")):
        end += 1
    end = min(end + 1, len(lines))  # the "ExcType: message" line
    head = lines[start - 1] if start > 0 else ""
    return "\n".join([head, *lines[start:end]]).strip()


def trace_files(trace: str, repo: Path) -> dict[str, str]:
    """Repo files named in the trace (relative path -> source, truncated)."""
    out: dict[str, str] = {}
    root = repo.resolve()
    for m in TRACE_FILE.finditer(trace):
        p = Path(m.group(1))
        for cand in ([p] if p.is_absolute() else [root / p]):
            try:
                rel = cand.resolve().relative_to(root)
            except ValueError:
                # a service started from another checkout: match by the tail of the path
                parts = cand.parts
                hit = next((Path(*parts[i:]) for i in range(len(parts))
                            if (root / Path(*parts[i:])).is_file()), None)
                if hit is None:
                    continue
                rel = hit
            f = root / rel
            if f.is_file() and str(rel) not in out:
                out[str(rel)] = f.read_text(errors="replace")[:MAX_FILE]
    return out


def schema(url: str) -> str:
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not Path(path).exists():
            return ""
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
                               "ORDER BY name").fetchall()
        finally:
            con.close()
        return ";\n".join(r[0] for r in rows) + ";"
    if url.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as c:
            rows = c.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM "
                "information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position").fetchall()
        tables: dict[str, list[str]] = {}
        for t, col, typ, nullable in rows:
            tables.setdefault(t, []).append(
                f"{col} {typ}{'' if nullable == 'YES' else ' NOT NULL'}")
        return "\n".join(f"TABLE {t} ({', '.join(cols)})" for t, cols in tables.items())
    return ""


def collect_sync(spec: ServiceSpec, failures: list[dict[str, Any]]) -> dict[str, Any]:
    repo = Path(spec.repo)
    trace = last_traceback(spec.log_path)
    head = git(repo, "rev-parse", "HEAD").strip()
    good = git(repo, "rev-parse", "--verify", "--quiet", spec.good_ref + "^{commit}",
               check=False).strip()
    commits = diff = ""
    if good:
        commits = git(repo, "log", "--format=%h %an %s", f"{good}..HEAD")
        diff = git(repo, "diff", f"{good}..HEAD")[:MAX_DIFF]
    try:
        db_schema = schema(spec.database_url)
    except Exception as exc:  # evidence is best effort; say what is missing
        db_schema = f"(schema unavailable: {type(exc).__name__})"
    return {"service": spec.name, "head": head, "good_ref": spec.good_ref,
            "good_commit": good or None, "commits_since_good": commits.strip(),
            "diff_since_good": diff, "stack_trace": trace, "files": trace_files(trace, repo),
            "schema": db_schema, "failing_requests": failures[-5:]}


async def collect(spec: ServiceSpec, failures: list[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.to_thread(collect_sync, spec, failures)
