"""Warm-up of a batch worker: load what the first line needs while the worker starts.

A worker exists because lines are queued. Its start-up (imports, services, DBOS launch,
the first claim) and the first line's lazy loads (the local model, llama.cpp's grammar
engine, the firewall's embedder session) used to run one after the other. Two steps now:

* :func:`preload_queued`, before the worker builds its services: read the queued lines'
  models and load the local ones. Loading holds the GIL (xllamacpp's constructor), so
  nothing else of the worker could run meanwhile anyway; but when the first line asks
  for ``json_schema`` output, the one-token request that makes llama.cpp build its
  grammar engine's token trie (on its first use in a process, ~1.5 s for Gemma 3's
  262k-token vocabulary, on llama.cpp's thread without the GIL) then runs while the
  worker builds its services and launches DBOS, instead of after them.
* :func:`warm_up`, once the services run: whatever the first step did not load (models
  of a tuned version, which resolve through the version registry) and the embedder.

The models are those of the queued lines, resolved the way the pipeline will (a promoted
fine-tuned version brings its adapter), and only local ones are loaded: an upstream model
has nothing to load. A failed warm-up changes nothing: the line loads what it needs
itself and reports the error there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keel.config import ModelSpec, Settings
    from keel.gateway.services import Services
    from keel.ports.provider import ChatProvider

log = logging.getLogger("keel.batch")
JSON = dict[str, Any]
WARM_TEXT = "warm-up"


async def _serving_spec(svc: Services, spec: ModelSpec) -> ModelSpec:
    from keel.tuning.registry import VersionRegistry

    registry = svc.find(VersionRegistry)
    if registry is None or spec.provider != "local" or spec.kind != "chat":
        return spec
    v = await registry.serving(spec.name)
    return spec.model_copy(update={"lora": v.adapter}) if v is not None else spec


def _merged(models: list[tuple[str, JSON | None]]) -> list[tuple[str, JSON | None]]:
    """One entry per model with the first ``json_schema`` format its lines ask for (batch
    order: the line a worker runs first)."""
    out: dict[str, JSON | None] = {}
    for name, fmt in models:
        if out.get(name) is None:
            out[name] = fmt
    return list(out.items())


async def preload_queued(settings: Settings) -> dict[str, ChatProvider]:
    """Load the queued lines' local models (and start llama.cpp's grammar engine for
    those whose first line asks for ``json_schema``) before the services exist; returns
    the provider that holds them, for the worker's build to use."""
    from keel.batch import store
    from keel.providers.local import LocalProvider
    from keel.providers.registry import ModelRegistry
    from keel.storage.sql import Database

    started = time.perf_counter()
    try:
        db = Database(settings.db_url)
        try:
            models = await db.run(store.queued_models)
        finally:
            db.dispose()
    except Exception as exc:  # nothing lost: the first line loads what it needs
        log.warning("batch warm-up: could not read the queued lines: %s", exc)
        return {}
    registry = ModelRegistry(settings)
    local: LocalProvider | None = None
    names: list[str] = []
    for name, fmt in _merged(models):
        if name not in registry:
            continue
        spec = registry.find(name)
        if spec.provider != "local" or spec.kind != "chat":
            continue
        provider = registry.provider(spec)
        if not isinstance(provider, LocalProvider):
            continue
        local = provider
        try:
            await provider.warm(spec, grammar=fmt)
        except Exception as exc:
            log.warning("batch warm-up of %s failed (the first line loads it): %s", name, exc)
            continue
        names.append(f"{name} (+ grammar, building)" if fmt else name)
    if names:
        log.info("batch warm-up before the build: %s in %.2f s", ", ".join(names),
                 time.perf_counter() - started)
    return {"local": local} if local is not None else {}


async def warm_up(svc: Services, models: list[tuple[str, JSON | None]]) -> list[str]:
    """Load the local models of ``(model, response_format)`` that are not loaded yet
    (and, for ``json_schema`` output, start llama.cpp's grammar engine on that schema) and
    the built embedder;
    returns what was warmed."""
    from keel.providers.local import LocalProvider

    started = time.perf_counter()
    jobs: list[Any] = []
    names: list[str] = []
    for name, fmt in _merged(models):
        if name not in svc.models:
            continue
        spec = svc.models.find(name)
        if spec.provider != "local" or spec.kind != "chat":
            continue
        spec = await _serving_spec(svc, spec)
        provider = svc.models.provider(spec)
        if isinstance(provider, LocalProvider) and not provider.is_loaded(spec):
            jobs.append(provider.warm(spec, grammar=fmt))
            names.append(f"{name} (+ grammar, building)" if fmt else name)
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
