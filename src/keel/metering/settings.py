"""Settings of the Prometheus endpoint (``[metrics]`` in keel.toml).

```toml
[metrics]
port = 9464                         # serve /metrics on its own listener (0: on the API port)
host = "127.0.0.1"                  # ... bound here: keep it on a private interface
token = "${KEEL_METRICS_TOKEN}"     # scrapers send Authorization: Bearer <token>
identity_labels = ["tenant", "agent", "payee"]   # who-labels a trusted scrape may see
```

Tenant names, agent names, spend per tenant and payees are operator data. A scrape sees
them only when it is *trusted*: it carries the token, or (no token configured) it arrives
on the separate listener. An untrusted scrape on the API port, the default, gets the same
series with every identity label folded into ``"*"`` (counters summed, per-tenant gauges
left out), so ``make run`` still shows traffic, latency, tokens and cost.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from keel.settings_section import Section

IdentityLabel = Literal["tenant", "agent", "payee"]


def _every_label() -> list[IdentityLabel]:
    return ["tenant", "agent", "payee"]


class MetricsSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    token: SecretStr | None = None
    identity_labels: list[IdentityLabel] = Field(default_factory=_every_label)
