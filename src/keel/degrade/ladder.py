"""The ladder: levels resolved against the model table and checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from keel.config import ModelSpec
from keel.degrade.settings import DegradeSettings, LadderConfig
from keel.errors import ConfigError, InvalidRequest
from keel.gateway.context import Depth


@dataclass(frozen=True)
class Level:
    index: int
    name: str
    depth: Depth | None  # None: the RAG stage uses [rag]'s depth
    max_tokens: int | None
    models: dict[str, ModelSpec] = field(default_factory=dict)  # requested -> served


def _resolve(where: str, start: str, mapping: dict[str, str]) -> str:
    """Follow ``mapping`` from ``start`` (a -> b -> c); a cycle is a ConfigError."""
    seen = [start]
    name = mapping[start]
    while name in mapping and mapping[name] != name:
        if name in seen:
            chain = " -> ".join([*seen, name])
            raise ConfigError(f"{where}: model mapping has a cycle ({chain})")
        seen.append(name)
        name = mapping[name]
    return name


class Ladder:
    def __init__(self, levels: list[Level]) -> None:
        self.levels = levels

    def __len__(self) -> int:
        return len(self.levels)

    @property
    def bottom(self) -> int:
        return len(self.levels) - 1

    def at(self, index: int) -> Level:
        return self.levels[max(0, min(index, self.bottom))]

    def by_name(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name.lower() == name.lower():
                return lv
        known = ", ".join(lv.name.lower() for lv in self.levels)
        raise InvalidRequest(f"unknown mode {name!r}; the ladder has: {known}", param="mode")

    @classmethod
    def build(cls, settings: DegradeSettings | LadderConfig, table: list[ModelSpec]) -> Ladder:
        specs = {m.name: m for m in table}
        levels = []
        for i, lv in enumerate(settings.levels):
            where = f"degrade.levels[{i}] ({lv.name})"
            served: dict[str, ModelSpec] = {}
            for requested in lv.models:
                key = f"{where}.models.{requested}"
                if requested not in specs:
                    raise ConfigError(f"{key}: unknown model {requested!r}; it must be in the "
                                      f"model table: {', '.join(sorted(specs))}")
                target = _resolve(key, requested, lv.models)
                spec = specs.get(target)
                if spec is None:
                    raise ConfigError(f"{key}: unknown model {target!r}; add it to [[models]]")
                if spec.kind != "chat":
                    raise ConfigError(f"{key}: {target!r} is an embedding model, not chat")
                if not (spec.input_usd_per_1m or spec.output_usd_per_1m):
                    raise ConfigError(
                        f"{key}: model {target!r} has no prices; set input_usd_per_1m and "
                        "output_usd_per_1m in its [[models]] entry (the spend alarms need them)")
                served[requested] = spec
            depth = None if lv.rag_top_k is None else \
                Depth(lv.name.upper(), lv.rag_top_k,
                      2000 if lv.rag_context_tokens is None else lv.rag_context_tokens)
            levels.append(Level(i, lv.name.upper(), depth, lv.max_tokens, served))
        return cls(levels)
