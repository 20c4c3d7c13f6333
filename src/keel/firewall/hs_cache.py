"""Compiled hyperscan databases kept on disk, keyed by everything that went into them.

Compiling the firewall's rule set costs ~1 s of CPU on an idle core and several seconds
under load; every process that builds the firewall paid it, including each ``keel worker``
the batch scaler starts. Loading the serialized database takes a few milliseconds.

The key hashes the hyperscan version, the mode, the flags, the patterns and this CPU (its
architecture and feature flags: a database is compiled for the host it was built on, and a
data directory may be shared between machines). A file holds a SHA-256 of the blob ahead of
the blob, so a truncated or damaged file is recompiled, never scanned with. Files are 0600
in a 0700 directory under the data directory; the newest ``KEEP`` stay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.storage.private_files import FILE_MODE, private_dir

log = logging.getLogger("keel.firewall")
KEEP = 8
SUFFIX = ".hsdb"


def _cpu() -> str:
    """Architecture and CPU feature flags (what a compiled database depends on)."""
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    return f"{platform.machine()} {flags}"


def cache_key(patterns: Sequence[str], flags: int, mode: int) -> str:
    import hyperscan

    raw = json.dumps([getattr(hyperscan, "__version__", "?"), mode, flags, _cpu(),
                      list(patterns)])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def load(cache_dir: Path, key: str, mode: int) -> Any | None:
    """The cached database ready to scan, or ``None`` (missing, damaged, other CPU)."""
    import hyperscan

    try:
        data = (cache_dir / f"{key}{SUFFIX}").read_bytes()
    except OSError:
        return None
    digest, blob = data[:32], data[32:]
    if hashlib.sha256(blob).digest() != digest:
        log.warning("firewall: ignoring a damaged compiled rule set in %s", cache_dir)
        return None
    try:
        db = hyperscan.loadb(blob, mode)
        db.scratch = hyperscan.Scratch(db)
        db.scan(b"", match_event_handler=lambda *_a: None)  # fails now if unusable
    except Exception as exc:
        log.warning("firewall: cached compiled rule set unusable (%s); compiling", exc)
        return None
    return db


def store(cache_dir: Path, key: str, db: Any) -> None:
    """Write ``db`` atomically; keep the newest ``KEEP`` files. Failure only costs time."""
    import hyperscan

    try:
        private_dir(cache_dir)
        blob = hyperscan.dumpb(db)
        tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(hashlib.sha256(blob).digest() + blob)
        os.replace(tmp, cache_dir / f"{key}{SUFFIX}")
        files = sorted(cache_dir.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
        for old in files[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("firewall: could not cache the compiled rule set in %s: %s",
                    cache_dir, exc)
