"""``[remediation]`` settings: the services keel routes, detection, the run's limits."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from keel.settings_section import Section


class ServiceSpec(Section):
    """One service keel routes (``/svc/NAME/...``) and may remediate."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")
    production_url: str  # the running version: http://127.0.0.1:8000
    repo: str  # its git repository (a working checkout)
    good_ref: str = "deploy-good"  # the last good deploy: diffs since it go to the model
    # where a patch may touch (prefixes, relative to the repo root); tests go under tests_dir
    paths: list[str] = Field(default_factory=lambda: [""])
    tests_dir: str = "tests"
    # argv run in the candidate's worktree; {port} {db} are filled in
    start: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=lambda: ["python", "-m", "pytest", "-q", "-x"])
    health_path: str = "/healthz"
    database_url: str = ""  # sqlite:///path or postgresql://... (the clone's source)
    database_env: str = "DATABASE_URL"  # the variable the service reads its DB URL from
    log_path: str = ""  # where the service writes tracebacks
    # secrets the service needs, replaced by these sandbox values in tests and kept for the
    # candidate; e.g. {"PAYMENT_KEY": "sk_test_sandbox"}
    sandbox_env: dict[str, str] = Field(default_factory=dict)
    # the candidate's real environment (secrets referenced with ${VAR} in keel.toml)
    env: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("production_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("production_url must be an http(s) URL")
        return v.rstrip("/")


class DetectionSettings(Section):
    window_s: float = Field(default=5.0, gt=0)  # error rate over this sliding window
    tick_s: float = Field(default=0.5, gt=0)  # how often it is evaluated
    ewma_alpha: float = Field(default=0.1, gt=0, le=1)  # baseline smoothing per tick
    z: float = 4.0  # fire when the rate is this many deviations above the baseline...
    min_error_rate: float = 0.05  # ...and above this absolute floor...
    min_requests: int = 20  # ...over at least this many requests in the window
    latency_p95_floor_ms: float = 2000.0  # or p95 latency above this floor
    # after a run ends the detector leaves the service alone this long (no page storm while
    # a human looks); alerts and the API still open incidents
    cooldown_s: float = 600.0


class RemediationSettings(Section):
    enabled: bool = False
    services: list[ServiceSpec] = Field(default_factory=list)
    model: str = ""  # the fixer's model; default: [default_model]
    tenant: str = "remediation"  # metering and budgets see the fixer's calls under this
    max_tokens: int = 1500
    max_prompt_chars: int = 10_000  # evidence sent to the model is cut to this
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    canary_weight: float = Field(default=0.02, gt=0, lt=1)
    canary_s: float = Field(default=60.0, gt=0)
    canary_min_requests: int = 5  # fewer canary requests than this in the window: bad canary
    canary_max_error_rate: float = 0.01  # absolute ceiling on the canary's error rate
    canary_latency_factor: float = 2.0  # canary p95 may be at most this times stable's
    sandbox_timeout_s: float = Field(default=120.0, gt=0)
    sandbox_memory_mb: int = 1024
    sandbox_cpu_s: int = 120
    approval_timeout_s: float = Field(default=3600.0, gt=0)
    page_webhook_url: str = ""  # POSTed when a run ends without a fix (and on rollback)
    work_dir: str = ""  # clones and worktrees; default <data_dir>/remediation
    cpu_usd_per_hour: float = 0.04  # what one sandbox CPU-hour costs, for the run's cost
    branch_prefix: str = "keel/remediation/"
