"""Warm-up of a batch worker: load what the first line needs while the worker starts.

A worker exists because lines are queued. Its start-up (imports, services, DBOS launch,
the first claim) and the first line's lazy loads (the local model, the firewall's
embedder session) used to run one after the other; started here, right after the
services are built, the loads run on other threads while DBOS launches, so the first
line finds them ready. The models are those of the queued lines, resolved the way the
pipeline will (a promoted fine-tuned version brings its adapter), and only local ones are
loaded: an upstream model has nothing to load. When the first line asks for
``json_schema`` output, one constrained token is generated too: llama.cpp's grammar
engine (llguidance) builds a trie of the model's vocabulary on its first use in a
process, about 1.8 CPU-s for Gemma 3's 262k tokens (measured). A failed warm-up changes
nothing: the line loads what it needs itself and reports the error there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.config import ModelSpec
    from keel.gateway.services import Services

log = logging.getLogger("keel.batch")
WARM_TEXT = "warm-up"
WARM_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}},
               "required": ["ok"], "additionalProperties": False}


async def _serving_spec(svc: Services, spec: ModelSpec) -> ModelSpec:
    from keel.tuning.registry import VersionRegistry

    registry = svc.find(VersionRegistry)
    if registry is None or spec.provider != "local" or spec.kind != "chat":
        return spec
    v = await registry.serving(spec.name)
    return spec.model_copy(update={"lora": v.adapter}) if v is not None else spec


async def _load(provider: Any, spec: ModelSpec, constrained: bool) -> None:
    await provider.preload(spec)
    if constrained:  # llama.cpp builds its grammar engine's token trie on the first one
        await provider.chat({"model": spec.name, "max_tokens": 1, "temperature": 0,
                             "messages": [{"role": "user", "content": WARM_TEXT}],
                             "response_format": {"type": "json_schema", "json_schema": {
                                 "name": "warm", "schema": WARM_SCHEMA}}}, spec)


async def warm_up(svc: Services, models: list[tuple[str, bool]]) -> list[str]:
    """Load the local models of ``(model, constrained)`` (and, for constrained output,
    llama.cpp's grammar engine) and the built embedder; returns what was warmed."""
    started = time.perf_counter()
    jobs: list[Any] = []
    names: list[str] = []
    for name, constrained in models:
        if name not in svc.models:
            continue
        spec = svc.models.find(name)
        if spec.provider != "local" or spec.kind != "chat":
            continue
        spec = await _serving_spec(svc, spec)
        provider = svc.models.provider(spec)
        if hasattr(provider, "preload"):
            jobs.append(_load(provider, spec, constrained))
            names.append(f"{name} (+ grammar)" if constrained else name)
    embedder = svc.models.built_embedder
    if embedder is not None:
        jobs.append(embedder.embed([WARM_TEXT]))
        names.append("embedder")
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for name, r in zip(names, results, strict=True):
        if isinstance(r, BaseException):
            log.warning("batch warm-up of %s failed (the first line loads it): %s", name, r)
    if names:
        log.info("batch warm-up: %s in %.2f s", ", ".join(names),
                 time.perf_counter() - started)
    return names
