"""``[wallets]`` settings: key encryption, budgets, payee allow-list, loop guard, x402 client."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from keel.settings_section import Section
from keel.wallets.money import usd_to_micros


class X402ClientSettings(Section):
    # CAIP-2 networks keel will pay on. The default is the sandbox's (Base Sepolia USDC);
    # production lists the real network, e.g. "eip155:8453" (Base mainnet USDC).
    networks: list[str] = Field(default_factory=lambda: ["eip155:84532"])
    schemes: list[str] = Field(default_factory=lambda: ["exact"])
    timeout_s: float = 30.0
    # requirements that let less than this many seconds to sign, retry and settle are refused
    min_validity_s: int = 10
    # ... and no more than this: on an unknown outcome the hold lives as long as the signed
    # authorization could still settle, so a server asking for days is refused
    max_validity_s: int = 900
    max_response_bytes: int = 10 * 1024 * 1024
    # SSRF guard for /v1/fetch (keel.x402.egress): globs on host or host:port. Agents may
    # fetch hosts matching ``hosts``; only hosts matching ``private_hosts`` may resolve to
    # loopback/private/link-local addresses (the sandbox: ["127.0.0.1:*", "localhost:*"]).
    hosts: list[str] = Field(default_factory=lambda: ["*"])
    private_hosts: list[str] = Field(default_factory=list)


class WalletSettings(Section):
    enabled: bool = False
    # AES-256-GCM key material for wallet private keys at rest: reference an environment
    # variable (``encryption_key = "${KEEL_WALLET_KEY}"``); >= 32 characters.
    encryption_key: SecretStr | None = None
    session_budget_usd: Decimal = Decimal("2.00")
    per_call_max_usd: Decimal = Decimal("0.10")
    daily_budget_usd: Decimal = Decimal("20.00")  # per agent per UTC day
    max_calls_per_minute: int = 60  # loop guard, per agent
    max_calls_per_session: int = 200  # loop guard, per session
    # "issued": keel pays only for sessions it opened (POST /v1/wallet/sessions by an
    # operator/orchestrator key, or by the agent's key within agent_sessions_per_day), so an
    # agent cannot reset its session budget by inventing a session id. "agent": the agent
    # names any session id (each new id is a fresh session budget; only the daily budget
    # bounds it) -- for trusted single-agent setups only.
    sessions: Literal["issued", "agent"] = "issued"
    agent_sessions_per_day: int = Field(default=10, ge=0)  # 0: only operators open sessions
    session_ttl_s: float = Field(default=86_400.0, gt=0, le=30 * 86_400)  # default and max
    # payTo addresses agents may pay; "*" allows any (not recommended in production)
    payees: list[str] = Field(default_factory=list)
    # a reservation whose outcome is unknown (connection lost after signing) is held until
    # the signed authorization can no longer settle, then released by the sweeper
    reservation_grace_s: float = 30.0
    # Cedar decides every payment as Action::"x402:pay" when the tool gateway (the policy
    # store) is on: default deny, so apply a permit for it (docs/wallets.md)
    cedar: bool = True
    # over a budget or the per-call cap: "refuse" with a clear error, or "approval" (with
    # [approvals] enabled): file an approval request, answer 202, pay once approved
    over_budget: Literal["refuse", "approval"] = "refuse"
    sweep_interval_s: float = 10.0
    x402: X402ClientSettings = Field(default_factory=X402ClientSettings)

    @field_validator("session_budget_usd", "per_call_max_usd", "daily_budget_usd")
    @classmethod
    def _micro_precision(cls, v: Decimal) -> Decimal:
        if v < 0:
            raise ValueError("budgets must not be negative")
        usd_to_micros(v)
        return v

    @property
    def session_budget(self) -> int:
        return usd_to_micros(self.session_budget_usd)

    @property
    def per_call_max(self) -> int:
        return usd_to_micros(self.per_call_max_usd)

    @property
    def daily_budget(self) -> int:
        return usd_to_micros(self.daily_budget_usd)
