"""Console pages of the tuning loop: thumbs and a correction box on every request page
(posted through the same feedback code as ``POST /v1/feedback``) and the feedback list with
filters (rating, trainable, model, dates)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import InvalidRequest, KeelError
from keel.gateway.context import Principal
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from keel.tuning.feedback import FeedbackService


def _day(value: str, name: str) -> float | None:
    """``YYYY-MM-DD`` (UTC midnight) as a timestamp; empty: no bound."""
    if not value.strip():
        return None
    try:
        day = dt.date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest(f"`{name}` must be a date like 2026-12-04") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


class TuningPage:
    nav = NavItem("/console/feedback", "Feedback")

    def __init__(self, shell: ConsoleShell, feedback: FeedbackService) -> None:
        self.shell = shell
        self.svc = shell.svc
        self.feedback = feedback
        shell.request_panels.append(self)

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/feedback", self.page, methods=["GET"])
        r.add_api_route("/console/requests/{request_id}/feedback", self.vote,
                        methods=["POST"])

    async def request_panel(self, request: Request, principal: Principal,
                            row: dict[str, Any]) -> str:
        from keel.tuning.feedback import FeedbackFilter, list_feedback

        f = FeedbackFilter(request_id=row["id"],
                           tenant=None if principal.admin else principal.tenant)
        votes = await self.svc.db.run(lambda c: list_feedback(c, f))
        mine = next((v for v in votes if v["key_id"] == principal.key_id), None)
        q = request.query_params
        return self.shell.env.get_template("_feedback_panel.html").render(
            r=row, votes=votes, mine=mine, csrf=self.shell.csrf(request),
            message=q.get("fb_msg"), error=q.get("fb_err"),
            require_correction=self.feedback.settings.require_correction)

    async def vote(self, request: Request, request_id: str) -> Response:
        """Thumbs up/down (and a correction) from the request page, as the signed-in key:
        the same validation, tenant check and upsert as ``POST /v1/feedback``."""
        from keel.tuning.feedback import parse_feedback

        post = await self.shell.session_post(request)
        if isinstance(post, Response):
            return post
        body: dict[str, Any] = {"request_id": request_id, "rating": post.field("rating")}
        for name in ("correction", "comment"):
            if post.field(name).strip():  # an empty box means "none", not an empty text
                body[name] = post.field(name)
        try:
            fb = parse_feedback(body, self.feedback.settings)
            out = await self.feedback.submit(post.principal, fb)
            msg = "thanks: " + ("correction saved, it will train the model" if out["trainable"]
                                else out.get("note") or "vote saved")
            q = {"fb_msg": msg}
        except KeelError as exc:
            q = {"fb_err": exc.message}
        return RedirectResponse(f"/console/requests/{quote(request_id, safe='')}?"
                                + urlencode(q) + "#feedback", status_code=303)

    async def page(self, request: Request) -> Response:
        from keel.tuning.feedback import FeedbackFilter, list_feedback

        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        q = dict(request.query_params)
        error, rows = None, []
        try:
            rating = q.get("rating") or None
            trainable = q.get("trainable") or None
            if rating not in (None, "up", "down"):
                raise InvalidRequest("`rating` is up or down")
            if trainable not in (None, "yes", "no"):
                raise InvalidRequest("`trainable` is yes or no")
            until = _day(q.get("to", ""), "to")
            f = FeedbackFilter(
                tenant=(q.get("tenant") or None) if p.admin else p.tenant,
                model=q.get("model") or None,
                rating=None if rating is None else (1 if rating == "up" else -1),
                trainable=None if trainable is None else trainable == "yes",
                since=_day(q.get("from", ""), "from"),
                until=None if until is None else until + 86_400, limit=500)
            rows = await self.svc.db.run(lambda c: list_feedback(c, f))
        except KeelError as exc:
            error = exc.message
        models = sorted(m.name for m in self.svc.settings.model_table() if m.kind == "chat")
        return self.shell.render("feedback.html", status=400 if error else 200,
                                 active="/console/feedback", principal=p, rows=rows, q=q,
                                 models=models, error=error)
