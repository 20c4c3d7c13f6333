"""``[approvals]`` settings: risk rules, the wait, reminders, channels, DBOS tuning."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from keel.settings_section import Section

Route = Literal["require", "auto", "deny"]


class RiskRule(Section):
    """First matching rule wins. Empty match fields match anything."""

    name: str
    route: Route
    actions: list[str] = Field(default_factory=list)  # fnmatch patterns on the action name
    risk_levels: list[str] = Field(default_factory=list)  # e.g. ["HIGH", "CRITICAL"]
    # matches when the proposal's amount (top-level or a money field in its arguments,
    # keel.approvals.routing) is >= min_amount
    min_amount: float | None = None
    # an auto rule matches a proposal an agent filed with its own key only when true: the
    # agent chooses its risk level, so it must not route itself past a human by default
    agent_requests: bool = False


def default_rules() -> list[RiskRule]:
    return [
        RiskRule(name="high-risk-waits", route="require", risk_levels=["HIGH", "CRITICAL"]),
        RiskRule(name="large-amount-waits", route="require", min_amount=1000.0),
        RiskRule(name="low-risk-runs", route="auto", risk_levels=["LOW"]),
    ]


class ApprovalsSettings(Section):
    enabled: bool = True
    # DBOS system database: default sqlite:///<data_dir>/dbos.sqlite; postgresql://... at scale
    system_database_url: str = ""
    timeout_s: float = 48 * 3600.0
    reminders: list[float] = Field(default_factory=lambda: [0.5, 0.9])  # fractions of timeout
    rules: list[RiskRule] = Field(default_factory=default_rules)
    default_route: Route = "require"  # when no rule matches
    # Base URL put in notification links (the decision page); default http://host:port
    public_url: str = ""
    slack_webhook_url: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    webhook_url: str = ""
    webhook_secret: SecretStr | None = None
    # Python modules with ``register(registry)`` adding action (and ASL task) handlers
    handler_modules: list[str] = Field(default_factory=lambda: ["keel.workflows.examples.refund"])
    # DBOS: pin executor and version so a restart recovers the waits of the previous process
    executor_id: str = "keel-gateway"
    application_version: str = "keel-approvals-1"
    polling_interval_s: float = 0.05
    max_wait_s: float = 60.0  # longest GET /v1/approvals/{id}?wait=S
    # A tool call held by @approval("required") waits this long for a decision before the
    # agent is told "pending" (it repeats the call once approved); 0 answers at once.
    tool_wait_s: float = Field(default=0.0, ge=0.0, le=300.0)
