"""``[batch]`` settings: the OpenAI Batch API and its scale-to-zero workers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from keel.settings_section import Section


class BatchSettings(Section):
    enabled: bool = False
    # uploads (`POST /v1/files`, purpose "batch"); OpenAI allows 200 MB and 50,000 lines
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    max_lines: int = Field(default=50_000, ge=1)
    # each line: a model call with this timeout (the reference's Lambda limit: 15 min),
    # retried with exponential backoff on timeouts and 5xx; after max_attempts (a worker
    # dying on the line counts too) it goes to the error file
    line_timeout_s: float = Field(default=900.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    retry_backoff_s: float = Field(default=2.0, ge=0)
    # the scaler starts `keel worker --queues keel.batch` processes while lines are queued
    # (false: run workers yourself, on this machine or others sharing the database)
    autoscale: bool = True
    max_workers: int = Field(default=1, ge=1, le=256)
    idle_s: float = Field(default=20.0, gt=0)  # a worker exits after this long without work
    worker_threads: int = Field(default=0, ge=0)  # llama.cpp threads per worker; 0: cores
    worker_slots: int = Field(default=4, ge=1, le=64)  # lines one worker decodes together
    worker_nice: int = Field(default=10, ge=0, le=19)  # interactive chat keeps the CPU
    # the built-in embedder in workers (the firewall's semantic layer screens every document
    # there): int8 halves its CPU, which on a saturated machine comes out of llama.cpp's
    # decoding, and leaves the firewall's decisions as they are (docs/batch.md); "inherit"
    # uses [local] embedder_precision like the gateway
    worker_embedder_precision: Literal["int8", "fp32", "inherit"] = "int8"
    # the local model's price for the cost comparison: CPU-seconds x this (a cloud vCPU)
    cpu_usd_per_hour: float = Field(default=0.045, ge=0)
