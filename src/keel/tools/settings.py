"""Settings for the tool gateway and its Cedar policies (``[tools]`` in keel.toml).

```toml
[tools]
timezone = "Europe/Berlin"          # context.now is computed in this zone

[[tools.servers]]                   # an MCP server: a stdio command or a streamable-HTTP URL
name = "crm"
command = ["python", "crm_server.py"]
spend_args = { issue_refund = "amount_cents" }   # adds to the session's spend when it succeeds

[[tools.http]]                      # a plain HTTP tool: keel POSTs the arguments as JSON
name = "weather"
url = "http://127.0.0.1:9000/weather"
input_schema = { type = "object", properties = { city = { type = "string" } } }

[tools.policy.roles]                # Cedar principal attributes, keyed by "<tenant>/<agent>"
"acme/support-bot" = ["support"]
```
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from keel.settings_section import Section

DEFAULT_INPUT_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


class McpServerSettings(Section):
    name: str
    command: list[str] = Field(default_factory=list)  # stdio: argv of the server process
    url: str | None = None  # streamable HTTP endpoint, e.g. http://127.0.0.1:9000/mcp
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)  # e.g. an upstream token
    timeout_s: float = 30.0
    spend_args: dict[str, str] = Field(default_factory=dict)  # tool -> integer-cents argument

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerSettings:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"tool server {self.name!r} needs exactly one of command= or url=")
        return self


class HttpToolSettings(Section):
    name: str
    url: str
    description: str = ""
    method: str = "POST"
    input_schema: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_INPUT_SCHEMA))
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    timeout_s: float = 30.0
    spend_arg: str | None = None


class PolicySettings(Section):
    # Cedar principal attributes: Agent::"<tenant>/<agent>" has `tenant` (from the API key),
    # `name` (the agent) and `roles`, keyed here by the same "<tenant>/<agent>" id
    roles: dict[str, list[str]] = Field(default_factory=dict)
    reload_s: float = 2.0  # how often a gateway checks the store for a newly applied version
    draft_model: str = ""  # model for `keel policy draft`; default: settings.default_model
    draft_repairs: int = 3
    log_arguments: bool = True  # keep call arguments in the decision log (shadow replays them)


    @field_validator("roles")
    @classmethod
    def _tenant_scoped(cls, roles: dict[str, list[str]]) -> dict[str, list[str]]:
        bare = sorted(k for k in roles if "/" not in k or k.startswith("/") or k.endswith("/"))
        if bare:
            raise ValueError(
                f"roles are keyed by '<tenant>/<agent>' (an agent name alone would grant the "
                f"roles to that agent name in every tenant): write e.g. 'default/{bare[0]}' "
                f"instead of {bare[0]!r}")
        return roles


class ToolSettings(Section):
    enabled: bool = True
    timezone: str = "UTC"
    max_argument_bytes: int = 65_536
    servers: list[McpServerSettings] = Field(default_factory=list)
    http: list[HttpToolSettings] = Field(default_factory=list)
    policy: PolicySettings = Field(default_factory=PolicySettings)

    @model_validator(mode="after")
    def _unique(self) -> ToolSettings:
        names = [s.name for s in self.servers] + [h.name for h in self.http]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tool servers/tools defined twice: {', '.join(dupes)}")
        return self
