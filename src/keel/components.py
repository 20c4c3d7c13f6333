"""Typed lookup of what capabilities built for one app.

A capability registers the objects others may use (``components.put(cache_stage)``) and
looks up what it needs by type (``components.find(Retriever)``: ``None`` when the
capability that provides it is off). ``get`` is for code that cannot work without it and
says which capability to turn on.
"""

from __future__ import annotations

from typing import TypeVar, cast

from keel.errors import KeelError

T = TypeVar("T")


class CapabilityUnavailable(KeelError):
    """Something asked for a component whose capability is disabled or not installed."""

    http_status = 404
    type = "invalid_request_error"
    code = "capability_disabled"


class Components:
    def __init__(self) -> None:
        self._by_type: dict[type, object] = {}
        self._owner: dict[type, str] = {}
        self.disabled: dict[str, str] = {}  # installed but off: name -> how to turn it on
        self.disabled_paths: list[tuple[str, str]] = []  # (path prefix, capability name)

    def put(self, obj: object, *, owner: str, kind: type | None = None) -> None:
        """Register ``obj`` under its own type (or ``kind``); one provider per type."""
        key = kind or type(obj)
        if key in self._by_type:
            raise ValueError(f"{key.__name__} is provided twice "
                             f"({self._owner[key]} and {owner})")
        self._by_type[key] = obj
        self._owner[key] = owner

    def find(self, kind: type[T]) -> T | None:
        return cast("T | None", self._by_type.get(kind))

    def get(self, kind: type[T]) -> T:
        obj = self._by_type.get(kind)
        if obj is None:
            off = "".join(f"; {name} is disabled: {hint}"
                          for name, hint in self.disabled.items())
            raise CapabilityUnavailable(
                f"{kind.__name__} is not available: the capability that provides it is "
                f"disabled or not installed{off}")
        return cast("T", obj)

    def disable(self, name: str, hint: str, paths: tuple[str, ...] = ()) -> None:
        self.disabled[name] = hint
        self.disabled_paths.extend((p.rstrip("/"), name) for p in paths)

    def off_for_path(self, path: str) -> str | None:
        """Why nothing serves ``path`` when a disabled capability owns it, else None."""
        for prefix, name in self.disabled_paths:
            if path == prefix or path.startswith(prefix + "/"):
                return f"{path} belongs to the {name} capability, which is off: " \
                       f"{self.disabled[name]}"
        return None

    def owner(self, kind: type) -> str | None:
        return self._owner.get(kind)
