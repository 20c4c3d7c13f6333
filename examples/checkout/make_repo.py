"""Build the demo service's git history in a new directory (keel's repo cannot nest one).

    python examples/checkout/make_repo.py /tmp/checkout-repo

Commit 1 is ``service/`` as it is here (tagged ``deploy-good``: the last good deploy);
then every patch in ``patches/`` is applied with ``git am``. Patch 0001 adds fixed-amount
discount codes and breaks every cart that uses an older percentage code (their new
``amount_off_cents`` column is NULL in production): ``min(None, int)`` -> TypeError.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = {"GIT_AUTHOR_NAME": "Dana Dev", "GIT_AUTHOR_EMAIL": "dana@example.com",
       "GIT_COMMITTER_NAME": "Dana Dev", "GIT_COMMITTER_EMAIL": "dana@example.com",
       "GIT_AUTHOR_DATE": "2026-01-05T01:00:00Z", "GIT_COMMITTER_DATE": "2026-01-05T01:00:00Z"}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **ENV, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                         text=True, env=env)
    return out.stdout.strip()


def build(dest: Path) -> str:
    """Create the repository at ``dest`` (must not exist); return the HEAD commit."""
    if dest.exists():
        raise SystemExit(f"{dest} already exists")
    shutil.copytree(HERE / "service", dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "checkout service")
    git(dest, "tag", "deploy-good")
    patches = sorted(str(p) for p in (HERE / "patches").glob("*.patch"))
    if patches:
        git(dest, "am", "-q", "--committer-date-is-author-date", *patches)
    return git(dest, "rev-parse", "HEAD")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_repo.py DEST")
    print(build(Path(sys.argv[1])))
