"""Console page for batches: recent batches with progress, and one batch's cost
comparison (local CPU vs each priced model); admins can cancel a running batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from keel.errors import KeelError
from keel.web.shell import ConsoleShell, NavItem

if TYPE_CHECKING:
    from fastapi import APIRouter

    from keel.batch.service import BatchService


class BatchPage:
    nav = NavItem("/console/batches", "Batches")

    def __init__(self, shell: ConsoleShell, batches: BatchService) -> None:
        self.shell = shell
        self.batches = batches

    def register(self, r: APIRouter) -> None:
        r.add_api_route("/console/batches", self.page, methods=["GET"])
        r.add_api_route("/console/batches/cancel", self.cancel, methods=["POST"])

    async def page(self, request: Request) -> Response:
        p = await self.shell.principal(request)
        if p is None:
            return RedirectResponse("/console/login", status_code=303)
        listing = await self.batches.list(p, None, 50)
        selected, cost = None, None
        wanted = request.query_params.get("batch")
        if wanted:
            try:
                selected = await self.batches.get(p, wanted)
                cost = await self.batches.cost(p, wanted)
            except KeelError:
                selected = None
        return self.shell.render(
            "batches.html", active="/console/batches", principal=p,
            batches=listing["data"], selected=selected, cost=cost,
            csrf=self.shell.csrf(request))

    async def cancel(self, request: Request) -> Response:
        post = await self.shell.admin_post(request)
        if isinstance(post, Response):
            return post
        batch_id = post.field("batch")
        try:
            await self.batches.cancel(post.principal, batch_id)
        except KeelError as exc:
            return Response(exc.message, status_code=exc.http_status)
        return RedirectResponse(f"/console/batches?batch={batch_id}", status_code=303)
