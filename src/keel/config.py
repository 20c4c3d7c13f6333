"""Settings: ``keel.toml``, then ``KEEL_*`` environment variables, then CLI flags.

One pydantic settings object. Later sources win: CLI flags (passed as init kwargs) override
the environment, which overrides the TOML file, which overrides the defaults. String values
in the TOML file may reference environment variables as ``${VAR}``; an unset variable is a
:class:`~keel.errors.ConfigError`, never a silent empty string.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from keel.approvals.settings import ApprovalsSettings
from keel.batch.settings import BatchSettings
from keel.cache.settings import CacheSettings
from keel.degrade.settings import DegradeSettings
from keel.errors import ConfigError
from keel.hive.settings import HiveSettings
from keel.metering.settings import MetricsSettings
from keel.qa.settings import QaSettings
from keel.rag.settings import RagSettings
from keel.reasoning.settings import ReasonerSpec, check_unique
from keel.remediation.settings import RemediationSettings
from keel.settings_section import Section
from keel.tools.settings import ToolSettings
from keel.tuning.settings import TuningSettings
from keel.wallets.settings import WalletSettings
from keel.workflows.settings import WorkflowsSettings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# "virtual": a model a capability answers itself (added to the registry, never configured)
ProviderKind = Literal["local", "openai", "virtual"]
ModelKind = Literal["chat", "embedding"]


class ModelSpec(Section):
    """One row of the model table: a public name routed to a provider's model."""

    name: str
    provider: ProviderKind = "openai"
    kind: ModelKind = "chat"
    upstream: str = ""
    context: int = 8192
    input_usd_per_1m: float = 0.0
    output_usd_per_1m: float = 0.0
    base_url: str | None = None
    api_key: SecretStr | None = None
    path: str | None = None  # GGUF path for local models; default model when unset
    # local models: "transcript" (Question:/Answer:, for base models like the default) or
    # "gemma" (turn tokens, for instruction-tuned Gemma GGUFs)
    chat_format: Literal["transcript", "gemma"] = "transcript"
    # local models: a LoRA adapter GGUF applied on top of `path` (a tuned version)
    lora: str | None = None

    @property
    def upstream_model(self) -> str:
        return self.upstream or self.name

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_usd_per_1m + completion_tokens * self.output_usd_per_1m
        ) / 1_000_000


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 1_048_576
    access_log: bool = False
    otel: bool = False  # FastAPI's native OpenTelemetry spans and metrics


class LocalModelSettings(Section):
    threads: int = Field(default=0, ge=0)  # 0 = all cores
    context: int = 4096
    slots: int = 4  # sequences decoded together (continuous batching), each with `context`
    idle_unload_s: float = 300.0
    max_tokens_default: int = 256
    # the built-in MiniLM embedder; "int8" is ~2x faster but moves cosines by up to ~0.03
    # (bench/embedder_quality.py), which shifts cache decisions near the thresholds
    embedder_precision: Literal["int8", "fp32"] = "fp32"
    # onnxruntime threads of the built-in embedder (0 = the cores this process may run
    # on); a batch worker uses 1, since its llama.cpp threads already fill the cores
    embedder_threads: int = Field(default=0, ge=0)
    # Nominal compute cost of the local model, so spend dashboards are never blank.
    input_usd_per_1m: float = 0.01
    output_usd_per_1m: float = 0.02


class OpenAISettings(Section):
    """Defaults for every model with ``provider = "openai"``."""

    base_url: str = "https://api.openai.com/v1"
    api_key: SecretStr | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    retries: int = 2
    max_connections: int = 256


class RequestLogSettings(Section):
    enabled: bool = True
    batch_size: int = 200
    flush_interval_s: float = 0.25
    queue_limit: int = 50_000
    store_bodies: bool = True


FirewallMode = Literal["block", "flag", "off"]


class FirewallSettings(Section):
    enabled: bool = True
    rules: list[str] = Field(default_factory=lambda: ["default"])  # rule-set names or files
    # JSON fields scanned: every messages[].content part, prompt, tool-call arguments
    scan_fields: list[str] = Field(
        default_factory=lambda: ["messages", "prompt", "tool_calls"]
    )
    max_scan_chars: int = 200_000  # longer prompts are refused (413), not silently cut
    semantic: bool = True
    # kNN margin (mean cosine to the 3 nearest known attacks minus to the 3 nearest benign
    # prompts), in (0, 1]; 0.14 from 5-fold CV on the training split. See docs/firewall.md.
    semantic_threshold: float = 0.14
    semantic_chunk_chars: int = 1000
    strikes: int = 5  # blocks within strike_window_s -> ban
    strike_window_s: float = 60.0
    ban_s: float = 24 * 3600.0
    trusted_proxies: list[str] = Field(default_factory=list)
    # block (403) | flag (answer, mark and log) | off; `modes` overrides per "TENANT",
    # "TENANT/ROUTE" or "*/ROUTE" (routes: chat, completions, tools), most specific first
    mode: FirewallMode = "block"
    modes: dict[str, FirewallMode] = Field(default_factory=dict)
    # who strikes and bans hit: the end user (this header, else the OpenAI `user` field, else
    # an address from a trusted proxy); "key" / "ip" (socket) only when listed here
    end_user_header: str = "x-keel-end-user"
    ban_fallback: list[Literal["key", "ip"]] = Field(default_factory=list)
    # a key whose anonymous traffic keeps being blocked is reported and its anonymous
    # requests are limited to this many per minute while watched (0: report only)
    watch_rate_per_min: int = 60
    # a secret string planted in your system prompt: an earlier assistant turn that contains
    # it means the model leaked the prompt; reported (log, metric, decision), never blocked
    canary: str = ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KEEL_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Path(".keel")
    database_url: str = ""  # default: sqlite:///<data_dir>/keel.db
    kv_url: str = ""  # default: sqlite:///<data_dir>/kv.db
    models_dir: Path | None = None  # default: <data_dir>/models
    default_model: str = "gemma-3-270m"
    auth_required: bool = True
    server: ServerSettings = Field(default_factory=ServerSettings)
    local: LocalModelSettings = Field(default_factory=LocalModelSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    request_log: RequestLogSettings = Field(default_factory=RequestLogSettings)
    firewall: FirewallSettings = Field(default_factory=FirewallSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    rag: RagSettings = Field(default_factory=RagSettings)
    degrade: DegradeSettings = Field(default_factory=DegradeSettings)
    approvals: ApprovalsSettings = Field(default_factory=ApprovalsSettings)
    workflows: WorkflowsSettings = Field(default_factory=WorkflowsSettings)
    remediation: RemediationSettings = Field(default_factory=RemediationSettings)
    tools: ToolSettings = Field(default_factory=ToolSettings)
    wallets: WalletSettings = Field(default_factory=WalletSettings)
    hive: HiveSettings = Field(default_factory=HiveSettings)
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    qa: QaSettings = Field(default_factory=QaSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    models: list[ModelSpec] = Field(default_factory=list)
    reasoners: list[ReasonerSpec] = Field(default_factory=list)  # [[reasoners]]
    # settings of capabilities from other packages: [plugins.NAME], validated by each one
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for m in models:
            if m.name in seen:
                raise ValueError(f"model {m.name!r} is defined twice in [[models]]")
            if m.provider == "virtual":
                raise ValueError(f"model {m.name!r}: provider 'virtual' is reserved for "
                                 "models capabilities add (reasoner/NAME)")
            seen.add(m.name)
        return models

    @field_validator("reasoners")
    @classmethod
    def _unique_reasoners(cls, reasoners: list[ReasonerSpec]) -> list[ReasonerSpec]:
        return check_unique(reasoners)

    # -- derived ----------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'keel.db'}"

    @property
    def kv(self) -> str:
        return self.kv_url or f"sqlite:///{self.data_dir / 'kv.db'}"

    @property
    def model_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    def model_table(self) -> list[ModelSpec]:
        """Configured models, plus the built-in local default unless overridden."""
        names = {m.name for m in self.models}
        builtins = [
            ModelSpec(name="gemma-3-270m", provider="local", context=self.local.context,
                      input_usd_per_1m=self.local.input_usd_per_1m,
                      output_usd_per_1m=self.local.output_usd_per_1m),
            ModelSpec(name="all-minilm-l6-v2", provider="local", kind="embedding", context=256),
        ]
        return [b for b in builtins if b.name not in names] + list(self.models)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # env and TOML are merged by load_settings()


def _expand(value: Any, where: str, strict: bool = True) -> Any:
    """Substitute ``${VAR}``. Unset: an error, or (``strict=False``, for commands that do
    not use the setting) the value is left out so its default applies."""
    if isinstance(value, str):
        missing = [v for v in _VAR.findall(value) if v not in os.environ]
        if missing and not strict:
            return _UNSET
        if missing:
            raise ConfigError(f"{where} references ${{{missing[0]}}} but {missing[0]} is not set")
        return _VAR.sub(lambda m: os.environ[m.group(1)], value)
    if isinstance(value, dict):
        out = {k: _expand(v, f"{where}.{k}", strict) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _UNSET}
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", strict) for i, v in enumerate(value)]
    return value


_UNSET = object()  # a value whose ${VAR} is unset, left out when loading leniently


def read_toml(path: Path, *, strict_env: bool = True) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    result: dict[str, Any] = _expand(raw, path.name, strict_env)
    return result


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_overrides() -> dict[str, Any]:
    """KEEL_* variables as a nested dict (``KEEL_SERVER__PORT`` -> server.port)."""
    out: dict[str, Any] = {}
    fields = Settings.model_fields
    for key, value in os.environ.items():
        if not key.startswith("KEEL_") or key == "KEEL_CONFIG":
            continue
        path = key[5:].lower().split("__")
        if path[0] not in fields:
            continue
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def load_settings(config: Path | None = None, *, strict_env: bool = True,
                  **overrides: Any) -> Settings:
    """Build the settings object.

    ``config`` defaults to ``$KEEL_CONFIG`` or ``./keel.toml`` when that file exists.
    ``overrides`` are CLI flags; ``None`` values are ignored. Nested keys use dots.
    ``strict_env=False`` leaves out values whose ``${VAR}`` is unset instead of failing
    (CLI commands that never use them: `keel models` needs no wallet key).
    """
    if config is None:
        env_path = os.environ.get("KEEL_CONFIG")
        config = Path(env_path) if env_path else Path("keel.toml")
        data = read_toml(config, strict_env=strict_env) if config.exists() else {}
    else:
        data = read_toml(config, strict_env=strict_env)
    data = _merge(data, _env_overrides())
    flags: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = flags
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    data = _merge(data, flags)
    try:
        # init kwargs only: env was merged above so nested TOML tables and env combine.
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e["type"], tuple(e["loc"]), e["msg"])
                             for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None


def _problem(kind: str, loc: tuple[Any, ...], msg: str) -> str:
    """One validation error; an unknown key names itself, its table and the known keys."""
    if kind != "extra_forbidden" or not loc:
        return f"{'.'.join(str(p) for p in loc) or '(root)'}: {msg}"
    *where, key = loc
    model: Any = Settings
    table = ""
    entries = False  # the last field was a list or dict of tables: this part indexes it
    for i, part in enumerate(where):
        name = ".".join(str(p) for p in where[: i + 1] if not isinstance(p, int))
        if entries:
            entries = False
            table = f"[{table}] #{part + 1}" if isinstance(part, int) else f"[{name}]"
            continue
        field = model.model_fields.get(part) if _is_model(model) else None
        model = _section_type(field.annotation) if field is not None else None
        entries = field is not None and getattr(field.annotation, "__origin__", None) in (
            list, dict)
        table = f"[{name}]"
    known = ", ".join(sorted(model.model_fields)) if _is_model(model) else ""
    place = table or "the top level"
    return (f"unknown key {key!r} in {place}" + (f" (known keys: {known})" if known else "")
            + "; check the spelling in keel.toml (see docs/configuration.md)")


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _section_type(annotation: Any) -> Any:
    """The settings model behind a field's type (``list[X]``, ``dict[str, X]``, ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None
