"""Wake a tailing reader the moment a file changes: inotify on Linux, a timer elsewhere.

inotify (through libc, no extra dependency) wakes the reader within microseconds of the
writer's ``write()``. On an NFS/EFS mount it sees only writes made on this machine, so
the reader also looks every ``poll_s`` seconds (``[hive] poll_s``: set it low there).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1  # noqa: B018  (present?)
    except (OSError, AttributeError):
        return None
    return lib


class FileWatch:
    """``await watch.wait(timeout)``: returns when the file changed or after ``timeout``.
    ``directory=True`` watches a folder for files created or renamed into it."""

    def __init__(self, path: str | os.PathLike[str], *, directory: bool = False) -> None:
        self._fd = -1
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        lib = _libc()
        if lib is None:
            return
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return
        mask = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
        if directory:
            mask |= IN_CREATE | IN_MOVED_TO
        if lib.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            os.close(fd)
            return
        self._fd = fd
        self._loop.add_reader(fd, self._ready)

    @property
    def native(self) -> bool:
        return self._fd >= 0

    def _ready(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._fd, 65536):
                pass
        self._event.set()

    async def wait(self, timeout: float) -> None:
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
