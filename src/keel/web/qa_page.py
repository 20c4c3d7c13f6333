"""Console page for synthetic QA: recent runs and their gate, the judge's false-positive
rate per rubric version, and the failed evaluations a human reviews (admins only)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import InvalidRequest, KeelError
from keel.qa import runs
from keel.web.shell import ConsoleShell, NavItem


class QaPage:
    nav = NavItem("/console/qa", "QA")

    def __init__(self, shell: ConsoleShell) -> None:
        self.shell = shell
        self.svc = shell.svc

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/qa", self.page, methods=["GET"])
        r.add_api_route("/console/qa/review", self.review, methods=["POST"])

    async def review(self, request: Request) -> Response:
        post = await self.shell.admin_post(request)
        if isinstance(post, Response):
            return post
        try:
            try:
                result_id = int(post.field("result"))
            except ValueError:
                raise InvalidRequest("result must be a number") from None
            verdict = post.field("review")
            who = f"console:{post.principal.key_id}"
            await self.svc.db.run(lambda c: runs.mark(c, result_id, verdict, who))
            q = {"msg": f"result #{result_id} marked {verdict}"}
        except KeelError as exc:
            q = {"err": exc.message}
        return RedirectResponse("/console/qa?" + urlencode(q), status_code=303)

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        q = request.query_params
        if not p.admin:
            return self.shell.render("qa.html", active="/console/qa", principal=p,
                                     admin=False, runs=[], stats=[], failed=[])
        recent, stats, failed = await self.svc.db.run(lambda c: (
            runs.list_runs(c, 20), runs.rubric_stats(c),
            runs.failed_results(c, judged_only=True, unreviewed=q.get("all") != "1",
                                limit=100)))
        return self.shell.render(
            "qa.html", active="/console/qa", principal=p, admin=True, runs=recent,
            stats=stats, failed=failed, csrf=self.shell.csrf(request), message=q.get("msg"),
            error=q.get("err"))
