"""x402 payments: a client that follows HTTP 402 within a wallet's budget, ``POST /v1/fetch``,
and an offline sandbox (paid resource server + in-process facilitator + in-memory USDC)."""
