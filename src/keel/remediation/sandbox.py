"""Run a command (the service's tests) in a sandbox.

- Limits: wall-clock timeout (the process group is killed), CPU seconds, address space,
  open files and file size (``prlimit``).
- Network: a fresh network namespace with only a down loopback (``unshare -rn``) when the
  database clone is a file; always a Python audit hook (``sitecustomize``) that refuses
  outbound connections and DNS except to the clone's address, and refuses starting
  processes (which would escape the hook). Python-level, so it guards Python test suites.
- Files: a private mount namespace (``unshare -rm``) hides the given directories
  (production, keel's data) under an empty tmpfs and binds back only the worktree, the
  clone, the sandbox's home and the Python installation; required when anything is to be
  hidden (:class:`SandboxUnavailable` otherwise: nothing runs). The audit hook also
  refuses writes outside the worktree, the clone and the home, and reads outside those
  and the Python installation and system libraries.
- Environment: built from scratch: PATH, a private HOME and TMPDIR, the clone's URL and the
  service's sandbox values for its secrets; nothing of keel's own environment leaks in.

The CPU time used is measured with ``wait4`` (the child's own rusage) and priced by
``[remediation] cpu_usd_per_hour``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keel.errors import KeelError

OUTPUT_CHARS = 20_000

GUARD = r'''
import json
import os
import socket
import sys
from urllib.parse import parse_qs, unquote, urlsplit

_ALLOW = {a for a in os.environ.get("KEEL_SANDBOX_ALLOW", "").split(",") if a}
_HOSTS = {a.rsplit(":", 1)[0] for a in _ALLOW}
_SPAWN = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
          "os.fork", "os.forkpty", "pty.spawn")
# files: writable roots (the worktree, the sandbox's home, the clone), read-only roots (the
# Python installation, system libraries) and refused roots (production, keel's data)
_FILES = json.loads(os.environ.get("KEEL_SANDBOX_FILES") or "{}")
_real = os.path.realpath
_DENY = tuple(_real(p) for p in _FILES.get("deny", []))
_RW = tuple(_real(p) for p in _FILES.get("rw", []))


def _under(p, roots):
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)


_RO = tuple(r for r in {_real(p) for p in [
    *_FILES.get("ro", []), sys.prefix, sys.base_prefix, sys.exec_prefix,
    sys.base_exec_prefix, *(p for p in sys.path if p and os.path.isabs(p))]}
    if r != "/" and not _under(r, _DENY))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRITES = ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown",
           "os.utime", "os.chflags", "os.lchflags", "os.mkfifo", "os.mknod",
           "shutil.rmtree", "shutil.chown")


def _host(h):
    return h.decode() if isinstance(h, bytes) else str(h)


def _check(path, write):
    if path is None:
        path = "."
    if isinstance(path, int):  # an already opened descriptor: it was checked when opened
        return
    p = _real(os.fsdecode(path))
    if _under(p, _RW) or (not write and _under(p, _RO) and not _under(p, _DENY)):
        return
    raise PermissionError(f"keel sandbox: {'writing' if write else 'reading'} {p!r} is "
                          "refused (only the worktree, the clone and the sandbox's home)")


def _sqlite_target(db):
    """(path or None for in-memory, whether it opens for writing)."""
    db = os.fsdecode(db) if not isinstance(db, str) else db
    if db in ("", ":memory:"):
        return None, False
    if not db.startswith("file:"):
        return db, True
    u = urlsplit(db)
    mode = (parse_qs(u.query).get("mode") or ["rwc"])[0]
    if mode == "memory" or u.path in ("", ":memory:"):
        return None, False
    return unquote(u.path), mode != "ro"


def _keel_sandbox(event, args):
    if event in ("socket.connect", "socket.connect_ex", "socket.sendto", "socket.sendmsg"):
        sock, addr = args[0], args[1]
        if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", None):
            return
        if isinstance(addr, tuple) and f"{_host(addr[0])}:{addr[1]}" in _ALLOW:
            return
        raise PermissionError(f"keel sandbox: outbound network refused ({addr!r})")
    if event == "socket.getaddrinfo" and args[0] is not None and _host(args[0]) not in _HOSTS:
        raise PermissionError(f"keel sandbox: DNS refused ({_host(args[0])!r})")
    if event.startswith(_SPAWN):
        raise PermissionError(f"keel sandbox: starting processes is refused ({event})")
    if not _FILES:
        return
    if event == "open":
        mode, flags = args[1], args[2] or 0
        _check(args[0], bool(flags & _WRITE_FLAGS) or any(c in (mode or "") for c in "wax+"))
    elif event == "sqlite3.connect":
        path, write = _sqlite_target(args[0])
        if path is not None:
            _check(path, write)
    elif event in ("sqlite3.enable_load_extension", "sqlite3.load_extension"):
        raise PermissionError("keel sandbox: SQLite extensions (native code) are refused")
    elif event in ("os.listdir", "os.scandir"):
        _check(args[0], False)
    elif event in _WRITES:
        _check(args[0], True)
    elif event == "shutil.copytree":
        _check(args[0], False)
        _check(args[1], True)
    elif event in ("os.rename", "os.link", "shutil.move"):
        _check(args[0], True)
        _check(args[1], True)
    elif event == "os.symlink":
        _check(args[1], True)


sys.addaudithook(_keel_sandbox)
'''

# Runs first inside ``unshare -rm``: in a private mount namespace (root mapped to keel's
# user, so mounts need no privilege), mounts an empty read-only tmpfs over each hidden
# directory, then binds the kept paths (the worktree, the clone, the sandbox's home, the
# Python installation) back at their own paths from descriptors opened before the hiding.
# A writable file (the clone) in a hidden directory gets a private scratch tmpfs as its
# directory, for SQLite's journal. Then it enters the worktree by path (so ".." cannot
# reach the hidden tree) and execs the command. Paths are processed shallow first, so a
# hidden directory inside a kept one is hidden again. Any failure exits 126 before the
# command runs.
LAUNCHER = r'''
import ctypes, json, os, sys
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
cfg, argv = json.loads(sys.argv[1]), sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)


def mount(src, dst, fstype, flags, data):
    enc = lambda v: None if v is None else v.encode()
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount over {dst}")


def under(p, root):
    return p == root or p.startswith(root.rstrip("/") + "/")


try:
    held = {k: os.open(k, os.O_PATH) for k in cfg["keep"] if os.path.lexists(k)}
    ops = sorted([(p.count("/"), 0, p) for p in cfg["hide"]]
                 + [(k.count("/"), 1, k) for k in held])
    done, tmpfs, scratch = [], [], set()
    for _, keep, p in ops:
        above = [(q, k) for q, k in done if under(p, q)]
        covered = bool(above) and not max(above, key=lambda e: len(e[0]))[1]
        if keep and covered:
            src = f"/proc/self/fd/{held[p]}"
            if os.path.isdir(src):
                os.makedirs(p, exist_ok=True)
            else:
                parent = os.path.dirname(p)
                os.makedirs(parent, exist_ok=True)
                if p in cfg["writable"] and parent not in scratch:
                    # SQLite writes its journal beside the database: a private scratch
                    # directory (gone with the namespace) for it, not the shared one
                    mount("none", parent, "tmpfs", MS_NOSUID | MS_NODEV,
                          f"size={cfg['scratch_mb']}m,mode=700")
                    scratch.add(parent)
                open(p, "a").close()
            mount(src, p, None, MS_BIND | MS_REC, None)
        elif not keep and not covered:
            if not os.path.lexists(p):  # nothing there to hide
                continue
            if not os.path.isdir(p):
                raise NotADirectoryError(p)
            mount("none", p, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
            tmpfs.append(p)
        done.append((p, keep))
    for p in tmpfs:
        mount("none", p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    for fd in held.values():
        os.close(fd)
    os.chdir(cfg["cwd"])
except OSError as e:
    print(f"keel sandbox: hiding production files failed, nothing was run: {e}",
          file=sys.stderr)
    sys.exit(126)
os.execvp(argv[0], argv)
'''


@dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None: killed on timeout
    timed_out: bool
    seconds: float
    cpu_s: float
    output: str
    isolation: list[str]

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def public(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "timed_out": self.timed_out,
                "seconds": round(self.seconds, 3), "cpu_s": round(self.cpu_s, 3),
                "passed": self.passed, "isolation": self.isolation,
                "output_tail": self.output[-4000:]}


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 120.0
    cpu_s: int = 120
    memory_mb: int = 1024
    nofile: int = 256
    fsize_mb: int = 256


class SandboxUnavailable(KeelError):
    """The isolation a run needs cannot be set up here: nothing is run (fail closed)."""

    code = "sandbox_unavailable"


# system paths that are never hidden (the launcher needs /proc, the process /dev)
NEVER_HIDDEN = ("/", "/proc", "/dev", "/sys", "/usr", "/bin", "/lib", "/lib64", "/etc")
# read-only for the audit hook besides the Python installation (sys.prefix, sys.path)
SYSTEM_RO = ["/usr", "/lib", "/lib64", "/etc/localtime", "/etc/mime.types", "/proc/self",
             "/dev/urandom", "/dev/random", "/dev/zero"]


@functools.cache
def _can_unshare(flags: str) -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", flags, "true"], capture_output=True,
                              timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _real(p: str | Path) -> str:
    return os.path.realpath(p)


def _under(p: str, root: str) -> bool:
    return p == root or p.startswith(root.rstrip("/") + "/")


def file_policy(cwd: Path, home: Path, writable: Sequence[Path], hide: Sequence[str]
                ) -> dict[str, list[str]]:
    """What the audit hook allows: ``rw`` (the worktree, the home, the clone and SQLite's
    side files), ``ro`` (system libraries; the hook adds the Python installation) and
    ``deny`` (the hidden production paths, refused even where a read-only root holds
    them)."""
    rw = [_real(cwd), _real(home), "/dev/null"]
    for w in writable:
        rw += [_real(w)] + [_real(f"{w}{s}") for s in ("-journal", "-wal", "-shm")]
    return {"rw": rw, "ro": list(SYSTEM_RO), "deny": [_real(h) for h in hide]}


def _hidden(hide: Sequence[Path]) -> list[str]:
    out: list[str] = []
    for h in hide:
        r = _real(h)
        pseudo = any(_under(r, n) for n in ("/proc", "/dev", "/sys"))
        if pseudo or r in NEVER_HIDDEN:
            raise SandboxUnavailable(f"refusing to hide {r!r}: not a production path")
        if r not in out:
            out.append(r)
    return out


def build_argv(argv: list[str], limits: Limits, netns: bool,
               mounts: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """The wrapped command and the isolation layers applied. ``mounts`` (the launcher's
    config: cwd, hide, keep) adds the private mount namespace."""
    out = list(argv)
    layers = ["audit-hook:network+processes+files", "env:scrubbed"]
    if mounts is not None:
        out = [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(mounts), *out]
    if netns or mounts is not None:
        out = ["unshare", "-r" + ("n" if netns else "") + ("m" if mounts is not None else ""),
               "--", *out]
    if netns:
        layers.append("netns:unshare-rn")
    if mounts is not None:
        layers.append(f"mountns:hidden={len(mounts['hide'])}")
    if shutil.which("prlimit") is not None:
        mb = 1024 * 1024
        out = ["prlimit", f"--cpu={limits.cpu_s}", f"--as={limits.memory_mb * mb}",
               f"--nofile={limits.nofile}", f"--fsize={limits.fsize_mb * mb}", "--core=0",
               "--", *out]
        layers.append("rlimits:prlimit")
    return out, layers


def run_sync(argv: list[str], cwd: Path, env: dict[str, str], limits: Limits, *,
             allow: Sequence[str] = (), netns: bool | None = None,
             hide: Sequence[Path] = (), writable: Sequence[Path] = ()) -> SandboxResult:
    """Run ``argv`` in ``cwd``; ``env`` is the whole environment (plus the guard's).

    ``writable``: files besides ``cwd`` the command may write (the clone). ``hide``:
    directories the command must not see at all (production, keel's data): hidden by a
    mount namespace, which is then required (:class:`SandboxUnavailable` otherwise)."""
    hidden = _hidden(hide)
    if hidden and not _can_unshare("-rm"):
        raise SandboxUnavailable("the sandbox cannot hide production files here (no "
                                 "unprivileged mount namespace: unshare -rm failed); "
                                 "refusing to run the tests")
    home = Path(tempfile.mkdtemp(prefix="keel-sandbox-"))
    try:
        site = home / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(GUARD)
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                    "TMPDIR": str(home), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                    "PYTHONPATH": str(site), "KEEL_SANDBOX": "1",
                    "KEEL_SANDBOX_ALLOW": ",".join(allow),
                    "KEEL_SANDBOX_FILES": json.dumps(file_policy(cwd, home, writable, hidden)),
                    **env}
        use_netns = (not allow) if netns is None else netns
        use_netns = use_netns and _can_unshare("-rn")
        argv = [sys.executable if a == "{python}" else a for a in argv]
        mounts = None
        if hidden:
            exe = shutil.which(argv[0], path=full_env["PATH"]) if argv else None
            keep = [_real(cwd), _real(home), *(_real(w) for w in writable),
                    *{_real(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}]
            if exe is not None:  # the command's own installation (a venv elsewhere)
                keep.append(_real(Path(exe).resolve().parent.parent))
            mounts = {"cwd": _real(cwd), "hide": hidden, "keep": list(dict.fromkeys(keep)),
                      "writable": [_real(w) for w in writable], "scratch_mb": limits.fsize_mb}
        wrapped, layers = build_argv(argv, limits, use_netns, mounts)
        out_path = home / "output.txt"
        t0 = time.monotonic()
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(wrapped, cwd=cwd, env=full_env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            deadline = t0 + limits.timeout_s
            timed_out = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.02)
            proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        text = out_path.read_bytes()[-OUTPUT_CHARS:].decode(errors="replace")
        return SandboxResult(None if timed_out else proc.returncode, timed_out, seconds,
                             usage.ru_utime + usage.ru_stime, text, layers)
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def run(argv: list[str], cwd: Path, env: dict[str, str], limits: Limits, *,
              allow: list[str] | None = None, netns: bool | None = None,
              hide: Sequence[Path] = (), writable: Sequence[Path] = ()) -> SandboxResult:
    return await asyncio.to_thread(run_sync, argv, cwd, env, limits, allow=allow or [],
                                   netns=netns, hide=hide, writable=writable)
