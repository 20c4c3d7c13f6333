"""An in-process x402 facilitator: the SDK's ``x402Facilitator`` settling on :class:`InMemoryUSDC`.

:class:`LocalFacilitatorClient` satisfies the SDK's ``FacilitatorClient`` protocol, so a
resource server uses it exactly like the HTTP client of a hosted facilitator. ``outage``
makes every call fail the way an unreachable facilitator does (tests and the sandbox's
``/_sandbox/outage`` switch use it to prove no reservation is left stuck).
"""

from __future__ import annotations

import logging

from x402 import x402Facilitator
from x402.http.facilitator_client_base import FacilitatorResponseError
from x402.mechanisms.evm.exact import ExactEvmFacilitatorScheme
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

from keel.x402.usdc import InMemoryUSDC

log = logging.getLogger("keel.x402.facilitator")


class LocalFacilitatorClient:
    def __init__(self, chain: InMemoryUSDC, network: str) -> None:
        self.chain = chain
        self.network = network
        self.facilitator = x402Facilitator()
        self.facilitator.register([network], ExactEvmFacilitatorScheme(chain))  # type: ignore[arg-type]
        self.outage = False
        self.verified = 0
        self.settled = 0

    def _up(self) -> None:
        if self.outage:
            raise FacilitatorResponseError("facilitator unreachable (sandbox outage switch)")

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements
                     ) -> VerifyResponse:
        self._up()
        result = await self.facilitator.verify(payload, requirements)
        self.verified += 1
        if not result.is_valid:
            log.info("verify refused: %s", result.invalid_reason)
        return result

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements
                     ) -> SettleResponse:
        self._up()
        result = await self.facilitator.settle(payload, requirements)
        if result.success:
            self.settled += 1
        else:
            log.info("settle refused: %s", result.error_reason)
        return result

    def get_supported(self) -> SupportedResponse:
        self._up()
        return self.facilitator.get_supported()
