"""HTTP API: ``POST /checkout``, ``GET /healthz``. Errors are logged with their traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from checkout.db import Database, migrate, seed
from checkout.payments import charge
from checkout.pricing import CheckoutError, cart_total

log = logging.getLogger("checkout")


class App:
    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.lock = threading.Lock()
        migrate(self.db)
        seed(self.db)

    def checkout(self, body: dict[str, Any]) -> dict[str, Any]:
        items = [(str(i["sku"]), int(i["qty"])) for i in body.get("items", [])]
        if not items:
            raise CheckoutError("the cart is empty")
        code = body.get("discount_code")
        with self.lock:
            total = cart_total(self.db, items, code)
            mode = charge(total)
            self.db.execute("INSERT INTO orders (total_cents, discount_code, payment_mode) "
                            "VALUES (?, ?, ?)", (total, code, mode))
        return {"total_cents": total, "payment_mode": mode}


def handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True, "version": os.environ.get("CHECKOUT_VERSION", "")})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self.path != "/checkout":
                self._send(404, {"error": "not found"})
                return
            try:
                body = json.loads(raw or b"{}")
                self._send(200, app.checkout(body))
            except (CheckoutError, KeyError, ValueError, TypeError) as exc:
                if isinstance(exc, CheckoutError) or isinstance(exc, json.JSONDecodeError):
                    self._send(400, {"error": str(exc)})
                    return
                log.exception("POST /checkout failed: body=%s", raw[:500].decode(errors="replace"))
                self._send(500, {"error": "internal error"})
            except Exception:
                log.exception("POST /checkout failed: body=%s", raw[:500].decode(errors="replace"))
                self._send(500, {"error": "internal error"})

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(description="checkout demo service")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--db", default=os.environ.get("CHECKOUT_DATABASE_URL", "sqlite:///checkout.db"))
    p.add_argument("--log", default=None, help="append error logs (with tracebacks) here")
    a = p.parse_args()
    logging.basicConfig(filename=a.log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = ThreadingHTTPServer(("127.0.0.1", a.port), handler(App(a.db)))
    server.daemon_threads = True
    log.info("checkout listening on 127.0.0.1:%d", server.server_address[1])
    server.serve_forever()


if __name__ == "__main__":
    main()
