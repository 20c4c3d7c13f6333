"""Cedar authorization for tool calls: the refund rules, and fail-closed on every error."""

from __future__ import annotations

import pytest

from keel.errors import ConfigError, InvalidPolicy
from keel.policy.authorizer import Authorizer, AuthzRequest, principal_id
from keel.policy.examples import examples
from keel.policy.schema import ToolSignature

CRM = [
    ToolSignature("read_customer", "crm", {
        "type": "object", "properties": {"customer_id": {"type": "string"}},
        "required": ["customer_id"]}),
    ToolSignature("issue_refund", "crm", {
        "type": "object",
        "properties": {"customer_id": {"type": "string"}, "amount_cents": {"type": "integer"},
                       "note": {"type": "number"}, "tags": {"type": "array",
                                                            "items": {"type": "string"}}},
        "required": ["customer_id", "amount_cents"]}),
]

REFUND_POLICY = """
@id("read-business-hours")
permit(principal, action == Action::"read_customer", resource)
when { context.now.hour >= 9 && context.now.hour < 17 };

@id("refunds")
permit(principal, action == Action::"issue_refund", resource);

@id("no-refunds-over-50")
forbid(principal, action == Action::"issue_refund", resource)
when { context.amount_cents > 5000 };
"""


def now(hour: int = 11) -> dict[str, int]:
    return {"hour": hour, "minute": 0, "weekday": 2, "day": 3, "month": 3, "year": 2026,
            "epoch": 1772528400}


def req(tool: str, args: object, hour: int = 11, **kw: object) -> AuthzRequest:
    return AuthzRequest(agent="support-bot", tenant="acme", tool=tool, arguments=args,
                        now=now(hour), **kw)  # type: ignore[arg-type]


@pytest.fixture
def authz() -> Authorizer:
    a = Authorizer(CRM, roles={"acme/support-bot": ["support"]})
    a.load(REFUND_POLICY, 1)
    return a


def test_refund_example(authz: Authorizer) -> None:
    ok = authz.authorize(req("issue_refund", {"customer_id": "c1", "amount_cents": 4999}))
    assert ok.outcome == "allow" and ok.policy_ids == ("refunds",)
    big = authz.authorize(req("issue_refund", {"customer_id": "c1", "amount_cents": 5001}))
    assert big.outcome == "deny" and big.policy_ids == ("no-refunds-over-50",)
    assert "no-refunds-over-50" in big.reason
    assert authz.authorize(req("read_customer", {"customer_id": "c1"}, hour=10)).allowed
    late = authz.authorize(req("read_customer", {"customer_id": "c1"}, hour=20))
    assert late.outcome == "deny" and "default deny" in late.reason


@pytest.mark.parametrize("args, why", [
    # a Long argument that is not one: denied, naming the argument and what to send
    ({"customer_id": "c1", "amount_cents": "4999"}, "amount_cents' must be a whole number"),
    ({"customer_id": "c1", "amount_cents": 49.99}, "amount_cents' must be a whole number"),
    ({"customer_id": "c1", "amount_cents": True}, "amount_cents' must be a whole number"),
    ({"customer_id": "c1"}, "amount_cents"),  # missing required field
    ({"customer_id": "c1", "amount_cents": 10, "surprise": 1}, "surprise"),  # unknown field
    ({"customer_id": "c1", "amount_cents": 2**70}, "outside the range of Cedar's Long"),
    (["c1", 4999], "JSON object"),  # not an object at all
])
def test_bad_arguments_deny(authz: Authorizer, args: object, why: str) -> None:
    d = authz.authorize(req("issue_refund", args))
    assert d.outcome == "deny"
    assert why in d.reason


def test_json_numbers_reach_cedar_as_decimals(authz: Authorizer) -> None:
    d = authz.authorize(req("issue_refund", {"customer_id": "c1", "amount_cents": 1,
                                             "note": 1.5, "tags": ["x"]}))
    assert d.allowed and d.context is not None
    assert d.context["note"] == {"__extn": {"fn": "decimal", "arg": "1.5"}}


def test_unknown_action_denies(authz: Authorizer) -> None:
    d = authz.authorize(req("drop_database", {}))
    assert d.outcome == "deny" and "unknown tool" in d.reason
    # even a permit-everything policy cannot allow an action outside the schema
    d = authz.decide("support-bot", "acme", "drop_database", {"now": now()}, authz.snapshot)
    assert d.outcome == "deny"


def test_missing_context_fields_deny(authz: Authorizer) -> None:
    ctx = {"customer_id": "c1", "amount_cents": 10, "now": {"hour": 11},
           "session": {"id": "", "spend_cents": 0}}
    d = authz.decide("support-bot", "acme", "issue_refund", ctx, authz.snapshot)
    assert d.outcome == "deny" and "day" in d.reason


def test_empty_and_unparsable_store_deny_everything() -> None:
    a = Authorizer(CRM)
    assert a.authorize(req("read_customer", {"customer_id": "c"})).outcome == "deny"  # no policy
    a.load("", 3)
    d = a.authorize(req("read_customer", {"customer_id": "c"}))
    assert d.outcome == "deny" and "unusable" in d.reason and d.version == 3
    a.load("permit(principal, action, resource) when { nonsense", 4)
    d = a.authorize(req("read_customer", {"customer_id": "c"}))
    assert d.outcome == "deny" and "does not parse" in d.reason


def test_policy_erroring_at_evaluation_denies_even_if_a_permit_matches() -> None:
    a = Authorizer(CRM)
    # Validates, but overflows for big amounts: Cedar skips an erroring forbid, keel must not.
    a.load('@id("allow-all") permit(principal, action, resource);\n'
           '@id("overflow") forbid(principal, action == Action::"issue_refund", resource) '
           'when { context.amount_cents * 1000000000000 > 0 };', 1)
    d = a.authorize(req("issue_refund", {"customer_id": "c1", "amount_cents": 9_000_000_000}))
    assert d.outcome == "deny" and "evaluation error" in d.reason
    assert a.authorize(req("issue_refund", {"customer_id": "c1", "amount_cents": 0})).outcome \
        == "allow"


def test_approval_annotation(authz: Authorizer) -> None:
    authz.load('@id("refunds-need-a-human") @approval("required")\n'
               'permit(principal, action == Action::"issue_refund", resource);', 2)
    d = authz.authorize(req("issue_refund", {"customer_id": "c1", "amount_cents": 10}))
    assert d.outcome == "approval" and d.policy_ids == ("refunds-need-a-human",)


def test_principal_attributes_and_session_spend(authz: Authorizer) -> None:
    authz.load('@id("support-under-budget") permit(principal, action, resource) when '
               '{ principal.roles.contains("support") && principal.tenant == "acme" '
               '&& context.session.spend_cents < 10000 };', 5)
    assert authz.authorize(req("read_customer", {"customer_id": "c"}, spend_cents=9999)).allowed
    assert not authz.authorize(req("read_customer", {"customer_id": "c"},
                                   spend_cents=10000)).allowed
    other = AuthzRequest(agent="intern", tenant="acme", tool="read_customer",
                         arguments={"customer_id": "c"}, now=now())
    assert authz.authorize(other).outcome == "deny"


def test_validate_returns_cedars_message(authz: Authorizer) -> None:
    with pytest.raises(InvalidPolicy, match="amount_cents"):
        authz.validate('permit(principal, action == Action::"read_customer", resource) '
                       'when { context.amount_cents > 1 };')
    with pytest.raises(InvalidPolicy, match="does not parse"):
        authz.validate("permit(")
    with pytest.raises(InvalidPolicy, match="empty"):
        authz.validate("  \n")


def test_reserved_argument_names_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        Authorizer([ToolSignature("t", "s", {"type": "object",
                                             "properties": {"now": {"type": "string"}}})])


def test_examples_cover_both_sides_of_each_rule(authz: Authorizer) -> None:
    snap = authz.validate(REFUND_POLICY)
    ex = examples(authz, snap)
    refund = {(e.value, e.decision.outcome) for e in ex if e.field == "amount_cents"}
    assert refund == {(5001, "deny"), (5000, "allow")}
    hours = {(e.value, e.decision.outcome) for e in ex if e.field == "now.hour"}
    assert (9, "allow") in hours and (8, "deny") in hours
    assert (16, "allow") in hours and (17, "deny") in hours


def test_same_agent_name_in_two_tenants_is_two_principals() -> None:
    """Tenant A's `bot` and tenant B's `bot` differ to policies and to roles."""
    a = Authorizer(CRM, roles={"acme/bot": ["support"]})
    a.load('@id("acme-bot") permit(principal == Agent::"acme/bot", action, resource);\n'
           '@id("support") permit(principal, action == Action::"issue_refund", resource) '
           'when { principal.roles.contains("support") };', 1)
    read = {"customer_id": "c1"}
    refund = {"customer_id": "c1", "amount_cents": 10}

    def ask(tenant: str, tool: str, args: object) -> str:
        return a.authorize(AuthzRequest(agent="bot", tenant=tenant, tool=tool,
                                        arguments=args, now=now())).outcome

    assert ask("acme", "read_customer", read) == "allow"
    assert ask("acme", "issue_refund", refund) == "allow"
    assert ask("globex", "read_customer", read) == "deny"  # not Agent::"acme/bot"
    assert ask("globex", "issue_refund", refund) == "deny"  # acme's roles are not globex's
    # a tenant name cannot forge another tenant's id: "/" in a tenant is escaped
    assert principal_id("acme/bot", "x") != principal_id("acme", "bot/x")
    assert ask("acme%2Fbot", "read_customer", read) == "deny"


def test_policies_can_name_the_agent_and_its_tenant() -> None:
    a = Authorizer(CRM)
    a.load('permit(principal, action, resource) when '
           '{ principal.name == "bot" && principal.tenant == "acme" };', 1)
    ok = AuthzRequest(agent="bot", tenant="acme", tool="read_customer",
                      arguments={"customer_id": "c"}, now=now())
    assert a.authorize(ok).allowed
    assert not a.authorize(AuthzRequest(agent="bot", tenant="globex", tool="read_customer",
                                        arguments={"customer_id": "c"}, now=now())).allowed


def test_roles_keyed_by_agent_name_alone_are_refused() -> None:
    from pydantic import ValidationError

    from keel.tools.settings import PolicySettings

    with pytest.raises(ValidationError, match="'<tenant>/<agent>'"):
        PolicySettings(roles={"support-bot": ["support"]})
    assert PolicySettings(roles={"acme/support-bot": ["support"]}).roles


def test_identical_decisions_are_remembered_per_snapshot(authz: Authorizer) -> None:
    refund = {"customer_id": "c1", "amount_cents": 4999}
    first = authz.authorize(req("issue_refund", refund))
    again = authz.authorize(req("issue_refund", refund))
    assert first.outcome == again.outcome == "allow" and authz.memo_hits == 1
    assert again.policy_ids == first.policy_ids and again.context == first.context
    # a different argument, or a clock field a policy reads, is a new question for Cedar
    assert authz.authorize(req("issue_refund", {**refund, "amount_cents": 5001})).outcome \
        == "deny"
    assert authz.authorize(req("read_customer", {"customer_id": "c1"}, hour=10)).allowed
    late = authz.authorize(req("read_customer", {"customer_id": "c1"}, hour=20))
    assert late.outcome == "deny" and authz.memo_hits == 1
    # the policies read only now.hour: another minute or second is the same question
    moved = AuthzRequest(agent="support-bot", tenant="acme", tool="issue_refund",
                         arguments=refund, now={**now(), "minute": 42, "epoch": 1772530920})
    assert authz.authorize(moved).allowed and authz.memo_hits == 2
    # a new policy version never answers from the old one's memo
    authz.load(REFUND_POLICY.replace("> 5000", "> 100"), 2)
    after = authz.authorize(req("issue_refund", refund))
    assert after.outcome == "deny" and after.version == 2 and authz.memo_hits == 2


@pytest.mark.parametrize("condition", [
    "context.now.epoch < 1772528401",       # reads the field by name
    'context["now"]["epoch"] < 1772528401',  # the same, indexed
    "context.now == context.now && context.now.epoch < 1772528401",  # whole record
])
def test_clock_fields_a_policy_reads_stay_in_the_memo_key(condition: str) -> None:
    a = Authorizer(CRM)
    a.load(f'permit(principal, action == Action::"read_customer", resource) '
           f"when {{ {condition} }};", 1)
    assert a.authorize(req("read_customer", {"customer_id": "c1"})).allowed
    later = AuthzRequest(agent="support-bot", tenant="acme", tool="read_customer",
                         arguments={"customer_id": "c1"}, now={**now(), "epoch": 1772528460})
    assert a.authorize(later).outcome == "deny" and a.memo_hits == 0
