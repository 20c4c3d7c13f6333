"""Feedback capture: a vote (and what the answer should have been) on a logged request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, select

from keel.errors import InvalidRequest, MissingField, NotFound, WrongType
from keel.gateway.context import Principal
from keel.metering.request_log import get_request
from keel.storage.sql import Database
from keel.tuning import store
from keel.tuning.settings import TuningSettings

log = logging.getLogger("keel.tuning")


@dataclass(frozen=True)
class FeedbackIn:
    request_id: str
    rating: int
    correction: str | None = None
    comment: str | None = None


_FIELDS = frozenset({"request_id", "rating", "correction", "comment"})


def parse_feedback(body: Any, settings: TuningSettings) -> FeedbackIn:
    """Validate a ``POST /v1/feedback`` body; every problem is a 400 naming the field."""
    if not isinstance(body, dict):
        raise WrongType("the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:  # a misspelt or unsupported field (e.g. "tenant") must not pass unnoticed
        raise InvalidRequest(
            f"unknown field(s) {', '.join(f'`{k}`' for k in unknown)}; feedback takes "
            + ", ".join(f"`{k}`" for k in sorted(_FIELDS))
            + " (the tenant is the API key's own)", param=unknown[0])
    rid = body.get("request_id")
    if rid is not None and not isinstance(rid, str):
        raise WrongType("`request_id` must be a string (the x-keel-request-id of the "
                        "answer)", param="request_id")
    if not isinstance(rid, str) or not rid.strip():
        raise MissingField("`request_id` (the x-keel-request-id of the answer) is required",
                           param="request_id")
    rating = body.get("rating")
    if rating in ("up", "down"):
        rating = 1 if rating == "up" else -1
    if isinstance(rating, bool) or rating not in (1, -1):
        raise InvalidRequest("`rating` must be 1 (thumbs-up), -1 (thumbs-down), \"up\" or "
                             "\"down\"", param="rating")
    correction = _text(body, "correction", settings.max_correction_chars)
    comment = _text(body, "comment", settings.max_comment_chars)
    if rating == 1 and correction is not None:
        raise InvalidRequest("a thumbs-up cannot carry a correction; send rating -1 with the "
                             "answer it should have given", param="correction")
    if rating == -1 and correction is None and settings.require_correction:
        raise MissingField("this app requires a `correction` with every thumbs-down: what "
                           "should the answer have been?", param="correction")
    return FeedbackIn(rid.strip(), int(rating), correction, comment)


def _text(body: dict[str, Any], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WrongType(f"`{key}` must be a string", param=key)
    if not value.strip():
        raise InvalidRequest(f"`{key}` is empty; leave it out or write the text", param=key)
    if len(value) > limit:
        raise InvalidRequest(f"`{key}` is {len(value)} characters; the limit is {limit}",
                             param=key)
    return value.strip()


class FeedbackService:
    """Stores votes. ``on_trainable(model)`` runs (in the background) after every trainable
    correction: the capability points it at the training trigger."""

    def __init__(self, db: Database, settings: TuningSettings,
                 flush_log: Callable[[], Awaitable[None]] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.flush_log = flush_log
        self.on_trainable: Callable[[str], Awaitable[object]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _after_trainable(self, model: str | None) -> None:
        if not model or self.on_trainable is None or not self.settings.auto_train:
            return
        hook = self.on_trainable

        async def run() -> None:
            try:
                await hook(model)
            except Exception:  # the vote is stored; a trigger problem must not fail it
                log.exception("tuning trigger for %s failed", model)

        task = asyncio.create_task(run(), name=f"keel-tuning-trigger-{model}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def submit(self, principal: Principal, fb: FeedbackIn) -> dict[str, Any]:
        row = await self.db.run(lambda c: get_request(c, fb.request_id))
        if row is None and self.flush_log is not None:
            # the log is written in batches off the hot path: the answer may be seconds
            # old and still queued
            await self.flush_log()
            row = await self.db.run(lambda c: get_request(c, fb.request_id))
        # another tenant's request reads exactly like an unknown one: ids are not an oracle
        if row is None or (row["tenant"] != principal.tenant and not principal.admin):
            hint = ("send the x-keel-request-id header of the answer you rate")
            if fb.request_id.startswith(("chatcmpl-", "cmpl-")):  # the body's id, not keel's
                hint = (f"{fb.request_id!r} is the completion's own id; {hint} (with the "
                        "openai client: client.chat.completions.with_raw_response.create(...)"
                        ".headers['x-keel-request-id'])")
            raise NotFound(f"no request {fb.request_id!r} of yours is in the request log; "
                           f"{hint}", param="request_id")
        if row["status"] >= 400:
            raise InvalidRequest(f"request {fb.request_id!r} failed (status {row['status']}); "
                                 "only answers can be rated", param="request_id")
        trainable = fb.rating == -1 and fb.correction is not None
        now = time.time()
        values = {"tenant": row["tenant"], "model": row["model"], "rating": fb.rating,
                  "correction": fb.correction, "comment": fb.comment,
                  "trainable": trainable, "updated": now}

        def upsert(c: Connection) -> bool:
            key = and_(store.feedback.c.request_id == fb.request_id,
                       store.feedback.c.key_id == principal.key_id)
            if c.execute(select(store.feedback.c.created).where(key)).first() is None:
                c.execute(store.feedback.insert().values(
                    request_id=fb.request_id, key_id=principal.key_id, created=now, **values))
                return True
            c.execute(store.feedback.update().where(key).values(**values))
            return False

        created = await self.db.run(upsert)
        if trainable:
            self._after_trainable(row["model"])
        return {"object": "feedback", "request_id": fb.request_id, "model": row["model"],
                "rating": fb.rating,
                "trainable": trainable, "created": created,
                **({} if trainable or fb.rating == 1 else
                   {"note": "a thumbs-down without a correction is kept but cannot train "
                            "the model; send `correction` to make it trainable"})}


@dataclass(frozen=True)
class FeedbackFilter:
    tenant: str | None = None
    model: str | None = None
    rating: int | None = None
    trainable: bool | None = None
    since: float | None = None
    until: float | None = None
    request_id: str | None = None
    limit: int = 100


def list_feedback(c: Connection, f: FeedbackFilter) -> list[dict[str, Any]]:
    t = store.feedback
    q = select(t).order_by(t.c.updated.desc()).limit(f.limit)
    if f.tenant:
        q = q.where(t.c.tenant == f.tenant)
    if f.model:
        q = q.where(t.c.model == f.model)
    if f.rating is not None:
        q = q.where(t.c.rating == f.rating)
    if f.trainable is not None:
        q = q.where(t.c.trainable == f.trainable)
    if f.since is not None:
        q = q.where(t.c.updated >= f.since)
    if f.until is not None:
        q = q.where(t.c.updated < f.until)
    if f.request_id is not None:
        q = q.where(t.c.request_id == f.request_id)
    return [{str(k): v for k, v in r._asdict().items()} for r in c.execute(q)]


def count_trainable(c: Connection, model: str, since: float,
                    tenants: tuple[str, ...] | None = None) -> int:
    """New trainable corrections of ``model`` (only ``tenants``' when given)."""
    t = store.feedback
    q = select(func.count()).select_from(t).where(
        t.c.model == model, t.c.trainable.is_(True), t.c.updated > since)
    if tenants is not None:
        q = q.where(t.c.tenant.in_(tenants))
    return int(c.execute(q).scalar_one())
