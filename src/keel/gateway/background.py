"""Serve an app with uvicorn in a background thread on a free loopback port.

Used by ``keel chat`` when no gateway is running, and by tests that need real HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from keel.errors import KeelError


@contextmanager
def serving(app: FastAPI, *, host: str = "127.0.0.1", start_timeout_s: float = 30.0
            ) -> Iterator[str]:
    """Yield the base URL while ``app`` serves; stop it (lifespan included) on exit."""
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", access_log=False,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="keel-background-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise KeelError("the gateway did not start; run `keel doctor`")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
