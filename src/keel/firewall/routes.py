"""Admin API of the firewall: list, add and lift bans; list and add allow-list entries.

    GET    /v1/admin/firewall/bans                  active bans and watched keys
    POST   /v1/admin/firewall/bans                  {"client", "hours"?, "reason"?}
    DELETE /v1/admin/firewall/bans/{client}         lift a ban or a watch
    GET    /v1/admin/firewall/allow                 allow-list entries
    POST   /v1/admin/firewall/allow                 {"rule", "tenant"?} or
                                                    {"text", "role"?, "tenant"?}
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from keel.errors import InvalidRequest, NotFound
from keel.firewall.state import SUBJECT_KINDS, FirewallState
from keel.gateway.http import ORJSONResponse, read_body, require_admin
from keel.gateway.routes import authenticate
from keel.gateway.services import Services
from keel.gateway.validation import check, parse_json

ALLOW_ROLES = ("user", "tool", "function", "prompt", "tool_arguments", "tool_result", "*")


def _subject(client: str) -> str:
    if not client.startswith(SUBJECT_KINDS) or client.endswith(":"):
        raise InvalidRequest("name the client as user:TENANT:ID, ip:ADDRESS or key:KEY_ID",
                             param="client")
    return client


class FirewallAdminRoutes:
    def __init__(self, svc: Services, state: FirewallState) -> None:
        self.svc = svc
        self.state = state

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route("/v1/admin/firewall/bans", self.list_bans, methods=["GET"],
                        summary="Active firewall bans and watched keys (admin)")
        r.add_api_route("/v1/admin/firewall/bans", self.add_ban, methods=["POST"],
                        summary="Ban an end user, address or key by hand (admin)")
        r.add_api_route("/v1/admin/firewall/bans/{client:path}", self.lift_ban,
                        methods=["DELETE"], summary="Lift a ban or a watch (admin)")
        r.add_api_route("/v1/admin/firewall/allow", self.list_allows, methods=["GET"],
                        summary="Firewall allow-list entries (admin)")
        r.add_api_route("/v1/admin/firewall/allow", self.add_allow, methods=["POST"],
                        summary="Allow a rule for a tenant, or one exact text in one role")
        return r

    async def _admin(self, request: Request) -> None:
        require_admin((await authenticate(self.svc, request)).admin
                      or not self.svc.settings.auth_required)

    async def list_bans(self, request: Request) -> Response:
        await self._admin(request)
        return ORJSONResponse({
            "bans": [b.to_dict() for b in await self.state.list_bans()],
            "watched": [w.to_dict() for w in await self.state.list_watches()]})

    async def add_ban(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_json(await read_body(request, 65536, None))
        client = _subject(check(body, "client", str) or "")
        hours = check(body, "hours", float)
        if hours is not None and hours < 0:
            raise InvalidRequest("'hours' must be >= 0 (0: until lifted)", param="hours")
        reason = check(body, "reason", str) or "banned by an admin"
        ban = await self.state.ban(client, reason, None if not hours else hours * 3600)
        return ORJSONResponse(ban.to_dict(), status_code=201)

    async def lift_ban(self, request: Request, client: str) -> Response:
        await self._admin(request)
        if not await self.state.unban(_subject(client)):
            raise NotFound(f"{client} is not banned or watched")
        return ORJSONResponse({"client": client, "lifted": True})

    async def list_allows(self, request: Request) -> Response:
        await self._admin(request)
        return ORJSONResponse(await self.state.list_allows())

    async def add_allow(self, request: Request) -> Response:
        await self._admin(request)
        body = parse_json(await read_body(request, self.svc.settings.server.max_body_bytes))
        rule, text = check(body, "rule", str), check(body, "text", str)
        tenant = check(body, "tenant", str) or "*"
        if (rule is None) == (text is None):
            raise InvalidRequest("send exactly one of 'rule' (a rule id) or 'text' (one exact "
                                 "text, with its 'role')")
        if rule is not None:
            await self.state.allow_rule(rule, tenant)
            return ORJSONResponse({"rule": rule, "tenant": tenant}, status_code=201)
        role = check(body, "role", str) or "user"
        if role not in ALLOW_ROLES:
            raise InvalidRequest(f"'role' must be one of {', '.join(ALLOW_ROLES)}",
                                 param="role")
        digest = await self.state.allow_text(text or "", role, tenant)
        return ORJSONResponse({"sha256": digest, "role": role, "tenant": tenant},
                              status_code=201)
