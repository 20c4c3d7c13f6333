"""The tool gateway fails closed: untyped arguments, concurrent spend, durable and
unresettable session spend, misspelt approval annotations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from keel.errors import InvalidPolicy, PolicyDenied
from keel.gateway.context import Principal
from keel.policy import store as policy_store
from keel.policy.authorizer import Authorizer, AuthzRequest, parse_policies
from keel.policy.schema import ToolSignature
from keel.storage.migrations import migrate
from keel.storage.sql import Database
from keel.tools import decision_log, spend
from keel.tools.gateway import ToolGateway
from keel.tools.settings import ToolSettings
from keel.tools.upstreams import ToolSpec

# what a Python MCP server publishes for
#   def maybe_refund(customer_id: str, amount_cents: int | None = None,
#                    address: Address | None = None, note: Any = None)
MAYBE_REFUND = {
    "type": "object",
    "properties": {
        "customer_id": {"type": "string"},
        "amount_cents": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        "fee_cents": {"type": ["integer", "null"]},
        "address": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
        "note": {"default": None},  # Any: no type
        "ref": {"anyOf": [{"type": "integer"}, {"type": "string"}]},  # int | str
    },
    "required": ["customer_id"],
    "$defs": {"Address": {"type": "object", "properties": {
        "country": {"type": "string"}, "zip": {"type": ["string", "null"]}},
        "required": ["country"]}},
}
REFUND = {"type": "object",
          "properties": {"customer_id": {"type": "string"}, "amount_cents": {"type": "integer"}},
          "required": ["customer_id", "amount_cents"]}

CAP_POLICY = """
@id("refunds") permit(principal, action == Action::"refund_cents", resource);
@id("session-cap") forbid(principal, action == Action::"refund_cents", resource)
when { context.session.spend_cents + context.amount_cents > 10000 };
"""
NOW = {"hour": 11, "minute": 0, "weekday": 2, "day": 3, "month": 3, "year": 2026,
       "epoch": 1772528400}


# -- 1. arguments Cedar cannot type --------------------------------------------------------


@pytest.fixture
def maybe() -> Authorizer:
    a = Authorizer([ToolSignature("maybe_refund", "crm", MAYBE_REFUND)])
    a.load('@id("ok") permit(principal, action == Action::"maybe_refund", resource);\n'
           '@id("cap") forbid(principal, action == Action::"maybe_refund", resource)\n'
           'when { context has amount_cents && context.amount_cents > 5000 };\n'
           '@id("no-fr") forbid(principal, action == Action::"maybe_refund", resource)\n'
           'when { context has address && context.address.country == "FR" };', 1)
    return a


def ask(a: Authorizer, args: dict[str, Any]) -> Any:
    return a.authorize(AuthzRequest("bot", "acme", "maybe_refund", args, NOW))


def test_optional_argument_is_typed_and_policed(maybe: Authorizer) -> None:
    assert "amount_cents?: __cedar::Long" in maybe.schema_text
    assert "fee_cents?: __cedar::Long" in maybe.schema_text
    assert ask(maybe, {"customer_id": "c1"}).allowed
    big = ask(maybe, {"customer_id": "c1", "amount_cents": 999999})
    assert big.outcome == "deny" and big.policy_ids == ("cap",)
    assert big.context is not None and big.context["amount_cents"] == 999999
    # null is "absent": allowed, and the context has no amount
    none = ask(maybe, {"customer_id": "c1", "amount_cents": None, "fee_cents": None})
    assert none.allowed and none.context is not None and "amount_cents" not in none.context


def test_memo_never_answers_a_call_with_other_arguments(maybe: Authorizer) -> None:
    assert ask(maybe, {"customer_id": "c1"}).allowed
    assert ask(maybe, {"customer_id": "c1"}).allowed
    hits = maybe.memo_hits
    assert ask(maybe, {"customer_id": "c1", "amount_cents": 999999}).outcome == "deny"
    assert maybe.memo_hits == hits


def test_local_ref_models_are_typed(maybe: Authorizer) -> None:
    fr = ask(maybe, {"customer_id": "c1", "address": {"country": "FR", "zip": None}})
    assert fr.outcome == "deny" and fr.policy_ids == ("no-fr",)
    assert ask(maybe, {"customer_id": "c1", "address": {"country": "DE"}}).allowed


@pytest.mark.parametrize("args", [
    {"customer_id": "c1", "note": "hi"},
    {"customer_id": "c1", "note": {"amount_cents": 999999}},
    {"customer_id": "c1", "ref": 7},
])
def test_untyped_arguments_deny_instead_of_being_dropped(maybe: Authorizer,
                                                         args: dict[str, Any]) -> None:
    d = ask(maybe, args)
    assert d.outcome == "deny"
    assert "cannot see" in d.reason and "input schema" in d.reason


def test_cyclic_and_remote_refs_are_untyped() -> None:
    schema = {"type": "object", "properties": {
        "tree": {"$ref": "#/$defs/Node"}, "remote": {"$ref": "https://x/schema.json"}},
        "$defs": {"Node": {"$ref": "#/$defs/Node"}}}
    a = Authorizer([ToolSignature("t", "s", schema)])
    a.load('permit(principal, action == Action::"t", resource);', 1)
    for arg in ("tree", "remote"):
        d = a.authorize(AuthzRequest("bot", "acme", "t", {arg: 1}, NOW))
        assert d.outcome == "deny" and "cannot see" in d.reason


# -- 5. approval annotations ----------------------------------------------------------------


@pytest.mark.parametrize("annotation, hint", [
    ('@Approval("required")', "@Approval"),
    ('@APPROVAL("required")', "@APPROVAL"),
    ('@aproval("required")', "@aproval"),
    ('@approvals("required")', "@approvals"),
    ('@approval("none")', '"none"'),
    ('@approval("yes")', '"yes"'),
    ('@approval("requried")', '"requried"'),
    ("@approval", '""'),
])
def test_misspelt_approval_annotations_are_refused(annotation: str, hint: str) -> None:
    text = f'@id("r") {annotation}\npermit(principal, action == Action::"refund_cents", ' \
           "resource);"
    with pytest.raises(InvalidPolicy) as err:
        parse_policies(text)
    assert hint in err.value.message and '@approval("required")' in err.value.message
    a = Authorizer([ToolSignature("refund_cents", "crm", REFUND)])
    with pytest.raises(InvalidPolicy):
        a.validate(text)  # keel policy validate | apply
    assert a.load(text, 3).policies is None  # a stored one: deny everything, never allow


def test_supported_approval_annotation_still_holds() -> None:
    snap = parse_policies('@id("r") @approval("required") @description("refunds") '
                          'permit(principal, action, resource);')
    assert snap.approval == frozenset({"policy0"})


# -- 2/3. session spend ------------------------------------------------------------------


class FakeUpstream:
    name = "crm"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail = fail

    async def start(self, stack: AsyncExitStack) -> list[ToolSpec]:
        return [ToolSpec("refund_cents", "crm", "", REFUND, spend_arg="amount_cents")]

    async def call(self, tool: str, arguments: dict[str, Any],
                   meta: dict[str, Any] | None = None) -> types.CallToolResult:
        await asyncio.sleep(0.05)  # the calls overlap
        self.calls.append(arguments)
        return types.CallToolResult(content=[types.TextContent(type="text", text="ok")],
                                    is_error=self.fail)


def database(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    migrate(db, [*policy_store.MIGRATIONS, *decision_log.MIGRATIONS, *spend.MIGRATIONS])
    return db


async def open_gateway(db: Database, upstream: FakeUpstream, policy: str = CAP_POLICY
                       ) -> ToolGateway:
    settings = ToolSettings.model_validate({"policy": {"reload_s": 0}})
    gw = ToolGateway(settings, db, upstreams=[upstream],  # type: ignore[list-item]
                     clock=lambda: datetime(2026, 3, 3, 11, tzinfo=UTC))
    await gw.connect()
    if gw.store.active() is None:
        gw.store.apply(policy, validate=gw.authorizer.validate)
    await gw.reload(force=True)
    return gw


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[ToolGateway, FakeUpstream]]:
    up = FakeUpstream()
    gw = await open_gateway(database(tmp_path / "keel.db"), up)
    yield gw, up
    await gw.aclose()


BOT = Principal(key_id="k1", tenant="acme", agent="bot")


async def refund(gw: ToolGateway, cents: int, session: str = "s1") -> bool:
    try:
        await gw.call(BOT, "refund_cents", {"customer_id": "c1", "amount_cents": cents},
                      session)
    except PolicyDenied:
        return False
    return True


async def test_concurrent_calls_cannot_overshoot_the_session_cap(
        gateway: tuple[ToolGateway, FakeUpstream]) -> None:
    gw, up = gateway
    results = await asyncio.gather(*(refund(gw, 3000) for _ in range(8)))
    assert sum(results) == 3 and len(up.calls) == 3  # 9000 of 10000; a 4th would be 12000
    assert await gw.spend.spent_cents("acme", "s:s1") == 9000


async def test_failed_calls_release_their_reservation(tmp_path: Path) -> None:
    up = FakeUpstream(fail=True)
    gw = await open_gateway(database(tmp_path / "keel.db"), up)
    try:
        # while in flight a reservation counts; once the tool failed it is gone
        assert [await refund(gw, 6000) for _ in range(5)] == [True] * 5
        assert await gw.spend.spent_cents("acme", "s:s1") == 0
        assert len(up.calls) == 5
    finally:
        await gw.aclose()


async def test_session_spend_survives_a_restart_and_is_shared(tmp_path: Path) -> None:
    first = await open_gateway(database(tmp_path / "keel.db"), FakeUpstream())
    assert await refund(first, 6000)
    await first.aclose()
    # a restarted gateway (or a second worker) on the same database sees the 6000
    second = await open_gateway(database(tmp_path / "keel.db"), FakeUpstream())
    try:
        assert not await refund(second, 6000)
        assert await refund(second, 4000)
    finally:
        await second.aclose()


async def test_leaving_out_the_session_does_not_reset_spend(
        gateway: tuple[ToolGateway, FakeUpstream]) -> None:
    gw, _ = gateway
    assert [await refund(gw, 4000, session="") for _ in range(3)] == [True, True, False]
    decision = await gw.authorize(BOT, "refund_cents", {"customer_id": "c1",
                                                        "amount_cents": 1})
    assert decision.context is not None
    assert decision.context["session"] == {"id": "", "spend_cents": 8000}
    other = Principal(key_id="k2", tenant="acme", agent="other-bot")  # its own counter
    assert (await gw.authorize(other, "refund_cents", {"customer_id": "c1",
                                                      "amount_cents": 1})).allowed


async def test_negative_amounts_never_lower_the_spend(
        gateway: tuple[ToolGateway, FakeUpstream]) -> None:
    gw, _ = gateway
    assert await refund(gw, 9000)
    assert await refund(gw, -76000)  # the policy allows it, but it is not a credit
    assert await gw.spend.spent_cents("acme", "s:s1") == 9000
    assert not await refund(gw, 3000)


async def test_two_workers_share_one_cap(tmp_path: Path) -> None:
    ups = [FakeUpstream(), FakeUpstream()]
    gws = [await open_gateway(database(tmp_path / "keel.db"), up) for up in ups]
    try:  # no shared lock: the compare-and-set in the database keeps them honest
        results = await asyncio.gather(*(refund(gws[i % 2], 3000) for i in range(8)))
        assert sum(results) == 3
        assert await gws[0].spend.spent_cents("acme", "s:s1") == 9000
    finally:
        for gw in gws:
            await gw.aclose()


async def test_spend_is_read_only_when_the_policy_version_reads_it(tmp_path: Path) -> None:
    open_policy = 'permit(principal, action == Action::"refund_cents", resource);'
    gw = await open_gateway(database(tmp_path / "keel.db"), FakeUpstream(), open_policy)
    reads = 0
    real = gw.spend.spent_cents

    async def counted(tenant: str, session: str) -> int:
        nonlocal reads
        reads += 1
        return await real(tenant, session)

    gw.spend.spent_cents = counted  # type: ignore[method-assign]
    try:
        args = {"customer_id": "c1", "amount_cents": 1}
        assert (await gw.authorize(BOT, "refund_cents", args)).allowed
        assert reads == 0  # no policy reads it: one SQL round trip less per call
        gw.store.apply(CAP_POLICY, validate=gw.authorizer.validate)
        await gw.reload(force=True)
        assert (await gw.authorize(BOT, "refund_cents", args)).allowed
        assert reads == 1
        assert await refund(gw, 3000)  # a spending tool reserves under either policy
    finally:
        await gw.aclose()


class DefaultingUpstream(FakeUpstream):
    """A pydantic-typed server's ``amount_cents: int = 9999``: the tool fills the default
    itself when the caller leaves the argument out."""

    async def start(self, stack: AsyncExitStack) -> list[ToolSpec]:
        schema = {"type": "object",
                  "properties": {"customer_id": {"type": "string"},
                                 "amount_cents": {"type": "integer", "default": 9999}},
                  "required": ["customer_id"]}
        return [ToolSpec("refund_cents", "crm", "", schema, spend_arg="amount_cents")]


async def test_a_left_out_argument_is_judged_and_sent_with_its_default(tmp_path: Path) -> None:
    policy = """
@id("refunds") permit(principal, action == Action::"refund_cents", resource);
@id("small") forbid(principal, action == Action::"refund_cents", resource)
when { context has amount_cents && context.amount_cents > 5000 };
@id("session-cap") forbid(principal, action == Action::"refund_cents", resource)
when { context has amount_cents && context.session.spend_cents + context.amount_cents > 10000 };
"""
    up = DefaultingUpstream()
    gw = await open_gateway(database(tmp_path / "keel.db"), up, policy)
    try:
        with pytest.raises(PolicyDenied):  # judged as 9999 (> 5000), what the tool would run
            await gw.call(BOT, "refund_cents", {"customer_id": "c1"}, "s1")
        assert up.calls == []
        await gw.call(BOT, "refund_cents", {"customer_id": "c1", "amount_cents": 4000}, "s1")
        assert up.calls == [{"customer_id": "c1", "amount_cents": 4000}]
        assert await gw.spend.spent_cents("acme", "s:s1") == 4000
    finally:
        await gw.aclose()
