"""The one interface a capability implements to plug into keel.

A capability (the firewall, the cache, wallets...) is one package with one
``capability.py`` that subclasses :class:`Capability`. It says, in one place:

- its ``name`` and whether it is on for given settings (``enabled``);
- its schema migrations and CLI groups (known without settings: the CLI and
  ``keel doctor`` use them before any app exists) and its ``doctor`` checks;
- how to build its objects for one app (``__init__`` gets a :class:`BuildContext`); it
  registers what others may use in ``ctx.components`` (looked up by type) and its
  Prometheus metrics on ``ctx.metrics.registry``;
- what it adds to the request pipeline (``stages``: each at a :class:`Slot`), its HTTP
  routes (``install``), its console pages, and its lifecycle (``start``/``stop``).

Capabilities that use each other declare it: ``uses`` (ordering only: built and started
after those when they are on) or ``requires`` (start-up fails when one is off). They meet
through components, never through ``app.py`` reaching into both.

A ``keel worker --queues Q`` process builds only what running Q's jobs needs, so it
starts in about a second: the capabilities whose ``job_queues`` include a queue of Q, every
capability with ``every_worker`` (those shaping model calls, which jobs make through the
pipeline), and what those use or require. ``keel.capabilities``
lists the built-in ones and loads third-party ones from the ``keel.capabilities``
entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from keel.components import Components
from keel.errors import ConfigError

if TYPE_CHECKING:
    import typer
    from fastapi import FastAPI

    from keel.config import Settings
    from keel.gateway.pipeline import Stage
    from keel.gateway.services import Services
    from keel.metering.metrics import GatewayMetrics
    from keel.ports.kv import KV
    from keel.ports.provider import ChatProvider
    from keel.providers.registry import ModelRegistry
    from keel.storage.migrations import Migration
    from keel.storage.sql import Database
    from keel.web.shell import ConsolePage, ConsoleShell

M = TypeVar("M", bound=BaseModel)


class Slot(IntEnum):
    """Where a stage sits in the request pipeline (lower runs first). Metering always runs
    last, right before the provider call; stages passed to ``build_services`` directly run
    after every capability stage."""

    EDGE = 100  # refuse bad requests before any model, embedding or cache work
    CACHE = 200  # answer from the cache before choosing a model
    ROUTING = 300  # choose the model, RAG depth and caps
    CONTEXT = 400  # add context (RAG) to what the model sees


@dataclass(frozen=True)
class StageSlot:
    stage: Stage
    slot: int


@dataclass(frozen=True)
class CliGroup:
    """A ``keel NAME ...`` command group; ``build`` returns its typer app."""

    name: str
    build: Callable[[], typer.Typer]
    help: str


@dataclass
class DoctorCheck:
    """One line of ``keel doctor``: ``run`` returns a detail or raises with the fix."""

    name: str
    required: bool
    run: Callable[[], str]


class CheckFailed(Exception):
    """Raised by a :class:`DoctorCheck` with what to fix."""


@dataclass
class BuildContext:
    """What a capability is built from: the core services of one app."""

    settings: Settings
    db: Database
    kv: KV
    models: ModelRegistry
    metrics: GatewayMetrics
    components: Components


PageFactory = Callable[["ConsoleShell"], "ConsolePage"]


class Capability:
    """Base class: every hook has a no-op default, so a capability defines only its parts."""

    name: ClassVar[str]
    uses: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    # Built in every process that runs jobs, whatever queues it serves: anything that
    # shapes model calls (pipeline stages) must be, since jobs call models through the
    # pipeline. False for a capability that only serves HTTP or its own ``job_queues``.
    every_worker: ClassVar[bool] = True
    # URL path prefixes of the routes it installs: a request for one while the capability
    # is off gets a 404 that says how to turn it on, not "no such endpoint".
    paths: ClassVar[tuple[str, ...]] = ()

    # -- known without an app ----------------------------------------------------------

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return True

    @classmethod
    def how_to_enable(cls) -> str:
        """What to write in keel.toml to turn it on (shown when a disabled one is used)."""
        return f"set `enabled = true` in the [{cls.name}] table of keel.toml"

    @classmethod
    def migrations(cls) -> Sequence[Migration]:
        return ()

    @classmethod
    def job_queues(cls, settings: Settings) -> Sequence[str]:
        """The job queues this capability declares on the runtime with these settings
        (a ``keel worker`` serving one of them builds this capability)."""
        return ()

    @classmethod
    async def prepare_worker(cls, settings: Settings,
                             queues: Sequence[str]) -> Mapping[str, ChatProvider]:
        """In a ``keel worker`` serving ``queues``, before it builds its services: start
        what this capability's first jobs need (a model load) and return the providers
        the build is to use, which keep what was started. Default: nothing."""
        return {}

    @classmethod
    def cli_groups(cls) -> Sequence[CliGroup]:
        return ()

    @classmethod
    def doctor_checks(cls, settings: Settings) -> Sequence[DoctorCheck]:
        return ()

    @classmethod
    def plugin_settings(cls, settings: Settings, model: type[M]) -> M:
        """A third-party capability's ``[plugins.NAME]`` table, validated by ``model``."""
        try:
            return model.model_validate(settings.plugins.get(cls.name, {}))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(table)'}: {e['msg']}"
                for e in exc.errors())
            raise ConfigError(f"invalid [plugins.{cls.name}] settings: {problems}") from None

    # -- one app ------------------------------------------------------------------------

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx

    def stages(self) -> Sequence[StageSlot]:
        return ()

    def install(self, app: FastAPI, svc: Services) -> None:
        """Add HTTP routes to the app."""

    def console_pages(self) -> Sequence[PageFactory]:
        return ()

    async def start(self) -> None:
        """Start background work; called in dependency order when the app starts."""

    async def stop(self) -> None:
        """Release what ``start`` and ``__init__`` took; called in reverse order."""

    def __repr__(self) -> str:
        return f"<capability {self.name}>"

