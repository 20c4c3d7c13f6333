"""``keel x402 sandbox``: a paid resource server and a facilitator, offline, on 127.0.0.1.

The resource server is a FastAPI app behind the x402 SDK's own payment middleware with a
few priced endpoints; it verifies and settles through :class:`LocalFacilitatorClient`, which
runs the SDK's ``x402Facilitator`` against an in-memory USDC contract (balances, nonce
replay protection). The whole 402 -> sign -> retry -> verify -> settle loop is real and needs
no network. ``/mcp`` serves paid MCP tools on the same chain (:mod:`keel.x402.sandbox_mcp`).
``/_sandbox/*`` endpoints expose the chain for tests and demos.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_utils.crypto import keccak
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402 import x402ResourceServer
from x402.http.middleware.fastapi import payment_middleware
from x402.http.types import PaymentOption, RouteConfig
from x402.mechanisms.evm.default_assets import get_default_asset
from x402.mechanisms.evm.exact import ExactEvmServerScheme

from keel.x402.facilitator import LocalFacilitatorClient
from keel.x402.sandbox_mcp import SandboxMcp
from keel.x402.usdc import InMemoryUSDC

SANDBOX_NETWORK = "eip155:84532"  # Base Sepolia: the SDK knows its USDC (6 decimals)


def sandbox_payee() -> str:
    """The deterministic address the sandbox's endpoints are paid to."""
    return str(Account.from_key(keccak(b"keel x402 sandbox payee")).address)


def rogue_payee() -> str:
    """A second payee, used by ``/rogue`` to show the payee allow-list at work."""
    return str(Account.from_key(keccak(b"keel x402 sandbox rogue payee")).address)


@dataclass
class Priced:
    method: str
    path: str
    price: str
    pay_to: str = ""
    max_timeout_seconds: int = 60
    body: dict[str, Any] = field(default_factory=dict)


def default_endpoints(pay_to: str) -> list[Priced]:
    return [
        Priced("GET", "/weather", "$0.001", pay_to, body={"city": "Lisbon", "temp_c": 21}),
        Priced("GET", "/report", "$0.02", pay_to, body={"report": "quarterly numbers"}),
        Priced("POST", "/search", "$0.005", pay_to, body={"hits": ["a", "b"]}),
        Priced("GET", "/premium", "$5.00", pay_to, body={"premium": True}),
        Priced("GET", "/rogue", "$0.01", rogue_payee(), body={"rogue": True}),
        Priced("GET", "/stale", "$0.01", pay_to, max_timeout_seconds=1, body={"stale": True}),
    ]


@dataclass
class Sandbox:
    app: FastAPI
    chain: InMemoryUSDC
    facilitator: LocalFacilitatorClient
    endpoints: list[Priced]
    network: str = SANDBOX_NETWORK
    mcp: SandboxMcp | None = None  # paid MCP tools at /mcp


def build_sandbox(*, pay_to: str | None = None, faucet_usd: float = 10.0,
                  endpoints: list[Priced] | None = None,
                  network: str = SANDBOX_NETWORK) -> Sandbox:
    asset = get_default_asset(network)
    chain = InMemoryUSDC(token=asset["asset"], chain_id=int(network.split(":")[1]),
                         faucet=round(faucet_usd * 10 ** asset["decimals"]))
    facilitator = LocalFacilitatorClient(chain, network)
    server = x402ResourceServer(facilitator)
    server.register(network, ExactEvmServerScheme())  # type: ignore[no-untyped-call,arg-type]
    server.initialize()  # in-process: asks the local facilitator what it supports
    eps = endpoints if endpoints is not None else default_endpoints(pay_to or sandbox_payee())
    routes: dict[str, RouteConfig] = {
        f"{e.method} {e.path}": RouteConfig(
            accepts=PaymentOption(scheme="exact", pay_to=e.pay_to or pay_to or sandbox_payee(),
                                  price=e.price, network=network,
                                  max_timeout_seconds=e.max_timeout_seconds),
            description=f"sandbox {e.path}", mime_type="application/json",
        )
        for e in eps
    }
    mcp = SandboxMcp(server, network, pay_to or sandbox_payee())
    app = FastAPI(title="keel x402 sandbox", docs_url=None, redoc_url=None,
                  lifespan=mcp.lifespan)
    # a plain Route (not a Mount): "/mcp" itself must match without a slash redirect
    app.router.routes.append(Route("/mcp", endpoint=mcp.asgi))
    middleware = payment_middleware(routes, server, sync_facilitator_on_start=False)

    @app.middleware("http")
    async def x402(request: Request,
                   call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        return await middleware(request, call_next)

    for e in eps:
        app.add_api_route(e.path, _handler(e), methods=[e.method])

    async def free() -> Response:
        return JSONResponse({"free": True})

    async def ledger() -> Response:
        return JSONResponse({**chain.snapshot(), "settled": facilitator.settled,
                             "network": network, "outage": facilitator.outage})

    async def mint(request: Request) -> Response:
        body = await request.json()
        try:
            balance = chain.mint(str(body["address"]), int(body["amount"]))
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse({"error": f"need {{address, amount>0}}: {exc}"}, status_code=400)
        return JSONResponse({"address": body["address"], "balance": balance})

    async def outage(request: Request) -> Response:
        facilitator.outage = bool((await request.json()).get("down", True))
        return JSONResponse({"outage": facilitator.outage})

    app.add_api_route("/free", free, methods=["GET"])
    app.add_api_route("/_sandbox/ledger", ledger, methods=["GET"])
    app.add_api_route("/_sandbox/mint", mint, methods=["POST"])
    app.add_api_route("/_sandbox/outage", outage, methods=["POST"])
    return Sandbox(app, chain, facilitator, eps, network, mcp)


def _handler(e: Priced) -> Callable[[], Awaitable[Response]]:
    async def handle() -> Response:
        return JSONResponse({"path": e.path, **e.body})

    return handle


class SandboxServer:
    """An ASGI app (normally the sandbox's) served by uvicorn on 127.0.0.1 in a background
    thread, for tests and benchmarks."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port,
                                                    log_level="warning", access_log=False,
                                                    lifespan="on"))
        self._thread: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        import threading
        import time

        self._thread = threading.Thread(target=self.server.run, daemon=True,
                                        name="x402-sandbox")
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"x402 sandbox did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
