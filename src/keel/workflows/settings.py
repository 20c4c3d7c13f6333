"""``[workflows]`` settings: definitions loaded at start, limits, who may start what."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class WorkflowsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # name -> ASL JSON file, registered (as a new version when changed) at gateway start
    files: dict[str, Path] = Field(default_factory=dict)
    # An execution's input and each state's input/output (Step Functions: 256 KB)
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_definition_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Distributed Map items each process (gateway worker, `keel workflows worker`) runs
    map_worker_concurrency: int = Field(default=8, ge=1, le=1000)
    # Cedar policies deciding which workflows agent keys may start
    # (principal Agent::"name", action Action::"StartExecution", resource Workflow::"name").
    # Empty: agent keys start none; app and admin keys may start any.
    agent_policy: str = ""
    agent_policy_file: Path | None = None
