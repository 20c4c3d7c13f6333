"""Git side of a run: the diffs since the last good deploy, a worktree per candidate, the
model's patch checked (paths inside the service, no escapes) and applied, the commit."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path, PurePosixPath

from keel.errors import InvalidRequest, KeelError

DIFF_PATH = re.compile(r"^(?:\+\+\+|---) (?:[ab]/)?(\S+)|^diff --git a/(\S+) b/(\S+)",
                       re.MULTILINE)
GIT_ENV = {"GIT_AUTHOR_NAME": "keel remediation", "GIT_AUTHOR_EMAIL": "keel@localhost",
           "GIT_COMMITTER_NAME": "keel remediation", "GIT_COMMITTER_EMAIL": "keel@localhost",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


class PatchRejected(InvalidRequest):
    code = "patch_rejected"


class GitError(KeelError):
    code = "git_error"


def git(repo: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    env = {**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": os.devnull}
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                       env=env, input=stdin, timeout=60)
    if check and r.returncode != 0:
        raise GitError(f"git {args[0]} failed: {r.stderr.strip()[:500]}")
    return r.stdout


async def agit(repo: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    return await asyncio.to_thread(git, repo, *args, check=check, stdin=stdin)


def safe_path(path: str, allowed: list[str], what: str = "patch") -> str:
    """A repo-relative POSIX path inside one of the ``allowed`` prefixes, or PatchRejected."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] == ".git" or "\\" in path:
        raise PatchRejected(f"the {what} touches {path!r}: only relative paths inside the "
                            "service are allowed")
    norm = str(p)
    if not any(norm == a.rstrip("/") or norm.startswith(a.rstrip("/") + "/") or a in ("", ".")
               for a in allowed):
        raise PatchRejected(f"the {what} touches {norm!r}, outside the service's paths "
                            f"({', '.join(allowed)})")
    return norm


def patch_paths(diff: str) -> list[str]:
    paths: list[str] = []
    for m in DIFF_PATH.finditer(diff):
        for g in m.groups():
            if g and g != "/dev/null" and g not in paths:
                paths.append(g)
    return paths


def check_patch(diff: str, allowed: list[str]) -> list[str]:
    if not diff.strip():
        raise PatchRejected("the patch is empty")
    paths = patch_paths(diff)
    if not paths:
        raise PatchRejected("the patch is not a unified diff (no ---/+++ file headers)")
    return [safe_path(p, allowed) for p in paths]


async def add_worktree(repo: Path, dest: Path, branch: str, ref: str = "HEAD") -> None:
    if dest.exists():
        raise GitError(f"worktree {dest} already exists")
    await agit(repo, "worktree", "add", "-q", "-b", branch, str(dest), ref)


async def remove_worktree(repo: Path, dest: Path, *, keep_branch: bool) -> None:
    branch = (await agit(dest, "rev-parse", "--abbrev-ref", "HEAD", check=False)).strip()
    await agit(repo, "worktree", "remove", "--force", str(dest), check=False)
    if not keep_branch and branch and branch != "HEAD":
        await agit(repo, "branch", "-D", branch, check=False)


async def apply(worktree: Path, diff: str, *, reverse: bool = False) -> None:
    args = ["apply", "--whitespace=nowarn", "--recount"] + (["-R"] if reverse else [])
    r = await asyncio.to_thread(
        subprocess.run, ["git", "-C", str(worktree), *args, "--check", "-"],
        input=diff if diff.endswith("\n") else diff + "\n", capture_output=True, text=True,
        timeout=60)
    if r.returncode != 0:
        raise PatchRejected(f"the patch does not apply: {r.stderr.strip()[:800]}")
    await agit(worktree, *args, "-", stdin=diff if diff.endswith("\n") else diff + "\n")


def write_test(worktree: Path, path: str, code: str, tests_dir: str) -> str:
    rel = safe_path(path, [tests_dir], "regression test")
    if not rel.endswith(".py"):
        raise PatchRejected(f"the regression test {rel!r} must be a .py file")
    target = worktree / rel
    if target.exists():
        raise PatchRejected(f"the regression test {rel!r} would overwrite an existing file")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(code)
    return rel


async def commit(worktree: Path, message: str) -> str:
    await agit(worktree, "add", "-A")
    await agit(worktree, "commit", "-q", "-m", message)
    return (await agit(worktree, "rev-parse", "HEAD")).strip()
