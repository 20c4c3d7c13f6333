"""Helpers for the approvals tests: a real HTTP receiver for Slack / webhook messages and
an action that appends to a SQLite table (to count how often an action really ran)."""

from __future__ import annotations

import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from keel.approvals.handlers import HandlerContext, HandlerRegistry


class Receiver:
    """A real HTTP server on 127.0.0.1 that records every POST (headers and body)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def json(self) -> list[dict[str, Any]]:
        return [orjson.loads(b) for _, b in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ActionLog:
    """Actions append (key, action, arguments) rows to a SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as c:
            c.execute("create table if not exists runs (key text, action text, args text)")

    def record(self, payload: dict[str, Any], ctx: HandlerContext) -> dict[str, Any]:
        with sqlite3.connect(self.path) as c:
            c.execute("insert into runs values (?, ?, ?)",
                      (ctx.idempotency_key, "pay", orjson.dumps(payload).decode()))
        return {"paid": payload.get("to")}

    def runs(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.path) as c:
            return list(c.execute("select key, action, args from runs"))

    def register(self, registry: HandlerRegistry) -> None:
        registry.register("pay", self.record, on_deny=lambda p, ctx: {"notified": "denied"})
