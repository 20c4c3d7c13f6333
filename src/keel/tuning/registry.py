"""Model versions with lineage, and which one each public model name serves.

Promotion and rollback are rows in ``tuning_serving`` (a stack per model: promote pushes,
rollback pops), read by the serving stage at most ``refresh_s`` seconds late (at once in
the process that made the change): no restart, and every replica converges. The stage
swaps the adapter into the request's model spec, so the local provider loads the tuned
engine next to the base one, and names the version in the ``x-keel-model-version``
response header ("base" when no tuned version serves).

A promoted version serves **every tenant** that calls the model's public name: that is
why a round trains on one tenant's feedback unless the operator lists tenants that may
share a model (``keel.tuning.loop.scope``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from keel.errors import Conflict, InvalidRequest, NotFound
from keel.gateway.context import RequestContext
from keel.gateway.pipeline import Next
from keel.storage.sql import Database
from keel.tuning import store

HEADER = "x-keel-model-version"


@dataclass(frozen=True)
class Version:
    id: str
    model: str
    number: int
    parent: str
    base_model: str
    adapter: str
    dataset_hash: str
    hyperparams: dict[str, Any]
    metrics: dict[str, Any]
    report: dict[str, Any] | None
    status: str
    created: float

    @classmethod
    def from_row(cls, r: Any) -> Version:
        return cls(id=r.id, model=r.model, number=r.number, parent=r.parent or "",
                   base_model=r.base_model, adapter=r.adapter, dataset_hash=r.dataset_hash,
                   hyperparams=orjson.loads(r.hyperparams), metrics=orjson.loads(r.metrics),
                   report=orjson.loads(r.report) if r.report else None, status=r.status,
                   created=r.created)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _stack(c: Connection, model: str) -> list[str | None]:
    t = store.serving
    stack: list[str | None] = []
    for row in c.execute(select(t.c.version, t.c.action).where(t.c.model == model)
                         .order_by(t.c.seq)):
        if row.action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(row.version)
    return stack


class VersionRegistry:
    def __init__(self, db: Database, *, refresh_s: float = 2.0) -> None:
        self.db = db
        self.refresh_s = refresh_s
        self._serving: dict[str, tuple[float, Version | None]] = {}

    # -- versions ----------------------------------------------------------------------

    async def register(self, *, model: str, base_model: str, adapter: str, dataset_hash: str,
                       hyperparams: dict[str, Any], metrics: dict[str, Any],
                       report: dict[str, Any] | None, status: str, parent: str = "") -> Version:
        if not Path(adapter).is_file():
            raise InvalidRequest(f"adapter {adapter} does not exist; register the output of a "
                                 "finished training run")
        t = store.versions

        def insert(c: Connection) -> Version:
            n = int(c.execute(select(func.coalesce(func.max(t.c.number), 0))
                              .where(t.c.model == model)).scalar_one()) + 1
            vid = f"{model}@v{n}"
            c.execute(t.insert().values(
                id=vid, model=model, number=n, parent=parent, base_model=base_model,
                adapter=adapter, dataset_hash=dataset_hash,
                hyperparams=orjson.dumps(hyperparams).decode(),
                metrics=orjson.dumps(metrics).decode(),
                report=orjson.dumps(report).decode() if report is not None else None,
                status=status, created=time.time()))
            return Version.from_row(c.execute(select(t).where(t.c.id == vid)).one())

        return await self.db.run(insert)

    async def list(self, model: str | None = None) -> list[Version]:
        t = store.versions
        q = select(t).order_by(t.c.model, t.c.number.desc())
        if model:
            q = q.where(t.c.model == model)
        return await self.db.run(lambda c: [Version.from_row(r) for r in c.execute(q)])

    async def get(self, version_id: str) -> Version:
        t = store.versions
        row = await self.db.run(lambda c: c.execute(select(t).where(t.c.id == version_id))
                                .first())
        if row is None:
            raise NotFound(f"model version {version_id!r} does not exist; "
                           "`keel train versions` lists them", param="version")
        return Version.from_row(row)

    # -- serving -----------------------------------------------------------------------

    async def promote(self, version_id: str, *, force: bool = False) -> Version:
        v = await self.get(version_id)
        if v.status == "refused" and not force:
            raise Conflict(f"{version_id} was refused by the evaluation gate "
                           f"({'; '.join((v.report or {}).get('reasons', []))}); "
                           "promote it with force to override")
        if not Path(v.adapter).is_file():
            raise Conflict(f"the adapter of {version_id} ({v.adapter}) is missing")

        def change(c: Connection) -> None:
            if (_stack(c, v.model) or [None])[-1] == v.id:
                return
            self._mark(c, v.model, retire=True)
            c.execute(store.serving.insert().values(model=v.model, version=v.id,
                                                    action="promote", ts=time.time()))
            c.execute(store.versions.update().where(store.versions.c.id == v.id)
                      .values(status="promoted"))

        await self.db.run(change)
        self._serving.pop(v.model, None)
        return await self.get(version_id)

    async def rollback(self, model: str) -> Version | None:
        """Serve what served before the current version; returns it (``None``: the base)."""

        def change(c: Connection) -> str | None:
            stack = _stack(c, model)
            if not stack:
                raise Conflict(f"{model} serves its base model: nothing to roll back")
            self._mark(c, model, retire=True)
            c.execute(store.serving.insert().values(model=model, version=stack[-1],
                                                    action="rollback", ts=time.time()))
            prev = stack[-2] if len(stack) > 1 else None
            if prev is not None:
                c.execute(store.versions.update().where(store.versions.c.id == prev)
                          .values(status="promoted"))
            return prev

        prev = await self.db.run(change)
        self._serving.pop(model, None)
        return None if prev is None else await self.get(prev)

    @staticmethod
    def _mark(c: Connection, model: str, *, retire: bool) -> None:
        current = (_stack(c, model) or [None])[-1]
        if current is not None and retire:
            c.execute(store.versions.update().where(store.versions.c.id == current)
                      .values(status="retired"))

    async def serving(self, model: str) -> Version | None:
        now = time.monotonic()
        hit = self._serving.get(model)
        if hit is not None and now - hit[0] < self.refresh_s:
            return hit[1]

        def read(c: Connection) -> Any:
            current = (_stack(c, model) or [None])[-1]
            if current is None:
                return None
            return c.execute(select(store.versions)
                             .where(store.versions.c.id == current)).first()

        row = await self.db.run(read)
        v = None if row is None else Version.from_row(row)
        self._serving[model] = (now, v)
        return v


    async def cache_tag(self, ctx: RequestContext) -> str:
        """The version a local model serves (the cache keys answers on it: a promotion or
        rollback never serves answers cached from another version); ``""`` for the base.
        A cache hit never reaches the serving stage, so the header is set here too."""
        if ctx.model.provider != "local" or ctx.model.kind != "chat":
            return ""
        v = await self.serving(ctx.model.name)
        ctx.response_headers[HEADER] = v.id if v is not None else "base"
        return v.id if v is not None else ""


class VersionStage:
    """Serves the promoted version of a local model and names it in a response header."""

    name = "tuning"

    def __init__(self, registry: VersionRegistry) -> None:
        self.registry = registry

    async def __call__(self, ctx: RequestContext, call_next: Next) -> None:
        spec = ctx.model
        if spec.provider == "local" and spec.kind == "chat":
            v = await self.registry.serving(spec.name)
            if v is not None:
                ctx.model = spec.model_copy(update={"lora": v.adapter})
            ctx.response_headers[HEADER] = v.id if v is not None else "base"
        await call_next(ctx)
