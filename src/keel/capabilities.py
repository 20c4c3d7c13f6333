"""Which capabilities exist, in which order they are built and started.

The built-in ones are listed here (one line each); third-party packages add theirs
through the ``keel.capabilities`` entry-point group, as ``llm`` plugins do::

    [project.entry-points."keel.capabilities"]
    mything = "mypackage.capability:MyThing"

Order: a capability is built and started after every capability it ``uses`` or
``requires``, otherwise in list order (built-ins first); stopped in reverse.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from keel.capability import Capability
from keel.errors import ConfigError

if TYPE_CHECKING:
    from keel.config import Settings

ENTRY_POINT_GROUP = "keel.capabilities"

BUILTIN: tuple[str, ...] = (
    "keel.firewall.capability:FirewallCapability",
    "keel.rag.capability:RagCapability",
    "keel.cache.capability:CacheCapability",
    "keel.degrade.capability:DegradeCapability",
    "keel.tools.capability:ToolsCapability",
    "keel.wallets.capability:WalletsCapability",
    "keel.approvals.capability:ApprovalsCapability",
    "keel.batch.capability:BatchCapability",
    "keel.hive.capability:HiveCapability",
    "keel.remediation.capability:RemediationCapability",
    "keel.tuning.capability:TuningCapability",
    "keel.qa.capability:QaCapability",
    "keel.reasoning.capability:ReasoningCapability",
)


def _load(ref: str, where: str) -> type[Capability]:
    module, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"capability {ref!r} ({where}) cannot be loaded: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, Capability)):
        raise ConfigError(f"{ref!r} ({where}) is not a keel.capability.Capability subclass")
    return obj


def plugins() -> list[type[Capability]]:
    """Capabilities that installed packages declare in the entry-point group."""
    return [_load(ep.value, f"entry point {ep.name!r}")
            for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)]


def available(extra: Iterable[type[Capability]] = ()) -> list[type[Capability]]:
    """Built-ins, then plugins, then ``extra`` (tests, embedding apps), in build order."""
    caps = [_load(ref, "built-in") for ref in BUILTIN] + plugins() + list(extra)
    seen: dict[str, type[Capability]] = {}
    for cap in caps:
        if cap.name in seen and seen[cap.name] is not cap:
            raise ConfigError(f"two capabilities are named {cap.name!r}: "
                              f"{seen[cap.name].__module__} and {cap.__module__}")
        seen[cap.name] = cap
    return ordered(list(seen.values()))


def ordered(caps: Sequence[type[Capability]]) -> list[type[Capability]]:
    """Stable topological order over ``uses`` and ``requires``; a cycle is a ConfigError."""
    names = {c.name for c in caps}
    done: list[type[Capability]] = []
    placed: set[str] = set()
    visiting: set[str] = set()
    by_name = {c.name: c for c in caps}

    def visit(cap: type[Capability]) -> None:
        if cap.name in placed:
            return
        if cap.name in visiting:
            raise ConfigError(f"capabilities depend on each other in a cycle at {cap.name!r}")
        visiting.add(cap.name)
        for dep in (*cap.requires, *cap.uses):
            if dep in names:
                visit(by_name[dep])
        visiting.discard(cap.name)
        placed.add(cap.name)
        done.append(cap)

    for cap in caps:
        visit(cap)
    return done


def for_queues(caps: Sequence[type[Capability]], settings: Settings,
               queues: Iterable[str]) -> list[type[Capability]]:
    """The enabled capabilities a process serving ``queues`` must build, in build order:
    the owners of those queues, every ``every_worker`` one, and what they use or require."""
    enabled = {c.name: c for c in caps if c.enabled(settings)}
    wanted = set(queues)
    todo = [c for c in enabled.values()
            if c.every_worker or wanted.intersection(c.job_queues(settings))]
    picked: set[str] = set()
    while todo:
        cap = todo.pop()
        if cap.name in picked:
            continue
        picked.add(cap.name)
        todo.extend(enabled[d] for d in (*cap.requires, *cap.uses) if d in enabled)
    return [c for c in caps if c.name in picked]
