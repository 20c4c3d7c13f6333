"""Registered Python handlers: approval actions and ASL Task resources share one registry.

A handler is ``fn(payload: dict, ctx: HandlerContext) -> result`` (sync or async). Modules
named in ``[approvals] handler_modules`` expose ``register(registry)``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keel.errors import ConfigError, NotFound


@dataclass(frozen=True)
class HandlerContext:
    approval_id: str | None = None
    idempotency_key: str | None = None  # actions: dedupe side effects on this key
    task_token: str | None = None  # ASL .waitForTaskToken: the one-time reference
    decision_url: str | None = None  # where a human decides (confirmation page)
    state: str | None = None  # ASL state name
    execution_id: str | None = None  # ASL execution the task belongs to


Handler = Callable[[dict[str, Any], HandlerContext], Any]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._denials: dict[str, Handler] = {}
        self._labels: dict[str, tuple[str, str]] = {}

    def label(self, name: str, *, approve: str, deny: str) -> None:
        """What the two buttons say for this action (Slack), e.g. "Shift 100% Traffic"."""
        self._labels[name] = (approve[:75], deny[:75])  # Slack's plain_text button limit

    def labels(self, name: str) -> tuple[str, str]:
        return self._labels.get(name, ("Approve", "Deny"))

    def register(self, name: str, fn: Handler, *, on_deny: Handler | None = None) -> None:
        self._handlers[name] = fn
        if on_deny is not None:
            self._denials[name] = on_deny

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def has(self, name: str) -> bool:
        return name in self._handlers

    def get(self, name: str) -> Handler:
        try:
            return self._handlers[name]
        except KeyError:
            raise NotFound(f"no handler registered for {name!r}; registered: "
                           f"{', '.join(self.names()) or '(none)'}") from None

    def denial(self, name: str) -> Handler | None:
        return self._denials.get(name)

    def load_modules(self, modules: list[str]) -> None:
        for mod in modules:
            try:
                m = importlib.import_module(mod)
            except ImportError as exc:
                raise ConfigError(f"handler module {mod!r} cannot be imported: {exc}") from None
            reg = getattr(m, "register", None)
            if not callable(reg):
                raise ConfigError(f"handler module {mod!r} has no register(registry) function")
            reg(self)


async def call(fn: Handler, payload: dict[str, Any], ctx: HandlerContext) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(payload, ctx)
    return await asyncio.to_thread(fn, payload, ctx)
