"""``[tuning]`` settings: feedback capture, the training trigger and the evaluation gate."""

from __future__ import annotations

from pydantic import Field

from keel.settings_section import Section


class GateSettings(Section):
    """Promotion rule: the candidate must win on the held-out split by ``margin`` (exact
    match, 0..1) and lose at most ``regression_tolerance`` of the regression set."""

    margin: float = Field(default=0.05, ge=0.0, le=1.0)
    regression_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)
    max_new_tokens: int = Field(default=48, ge=1, le=1024)


class TriggerSettings(Section):
    """When one model's next round starts (``[tuning.triggers."<model>"]``); a field left
    out takes the ``[tuning]`` value."""

    min_new_corrections: int | None = Field(default=None, ge=1)
    every_hours: float | None = Field(default=None, ge=0.0)
    # whose feedback this model may be trained on (None: the [tuning] value); the tuned
    # version serves every tenant that calls the model, so this is the operator's consent
    # that these tenants share one model's training data
    tenants: list[str] | None = None
    # keep the system prompts of the feedback's requests in the training prompts (None:
    # the [tuning] value); only for a model no other tenant is served
    keep_system_prompts: bool | None = None


class TuningSettings(Section):
    enabled: bool = False
    # a thumbs-down without a correction is kept but flagged untrainable; set this to
    # refuse it instead (400) so every negative vote carries what it should have said
    require_correction: bool = False
    max_correction_chars: int = Field(default=8000, ge=1)
    max_comment_chars: int = Field(default=2000, ge=1)
    # the trigger: this many new trainable corrections for a model start a training run
    # (needs the `keel[train]` extra; off: run rounds with `keel train round MODEL`)
    auto_train: bool = True
    min_new_corrections: int = Field(default=50, ge=1)
    # ... or a schedule: a round every this many hours when at least one new trainable
    # correction arrived since the model's last version (0: no schedule)
    every_hours: float = Field(default=0.0, ge=0.0)
    triggers: dict[str, TriggerSettings] = Field(default_factory=dict)  # per model
    # tenants whose feedback may be mixed into one model's training data. Empty (the
    # default): a round or export uses ONE tenant's feedback; with feedback from several
    # tenants it needs an explicit `--tenant` (or this list) and refuses otherwise
    shared_tenants: list[str] = Field(default_factory=list)
    # system prompts are kept in training prompts only when the data is the single
    # tenant "default" (an install without per-tenant keys) or this is true: a tuned
    # version serves every tenant, and a tenant's system prompt is its own
    keep_system_prompts: bool = False
    # how often each process checks the triggers (one COUNT query per tuned model)
    check_every_s: float = Field(default=60.0, gt=0.0)
    min_dataset_rows: int = Field(default=8, ge=2)  # fewer cannot be split into train and eval
    eval_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    # this share of thumbs-up answers is trained on (replay: the model keeps what users
    # liked); the rest is the gate's regression set
    replay_fraction: float = Field(default=0.5, ge=0.0, lt=1.0)
    # training defaults (a spec file can override each); chosen on bench/tuning_loop.py for
    # the 270M model on a CPU: lr 2e-3 over 6 epochs collapsed onto one answer; lr 1e-3
    # won the held-out facts but broke approved answers ("symbol for oxygen?" -> "7420"),
    # which the gate refused; lr 5e-4 kept them (docs/tuning.md has every run)
    lora_rank: int = Field(default=16, ge=1, le=256)
    learning_rate: float = Field(default=5e-4, gt=0.0)
    epochs: float = Field(default=5.0, gt=0.0)
    checkpoint_every: int = Field(default=20, ge=1)
    threads: int = Field(default=0, ge=0)  # torch CPU threads (0: one per core)
    # cost reporting: what a CPU / GPU hour of training would cost
    cpu_usd_per_hour: float = Field(default=0.05, ge=0.0)
    gpu_usd_per_hour: float = Field(default=1.20, ge=0.0)
    gate: GateSettings = Field(default_factory=GateSettings)
