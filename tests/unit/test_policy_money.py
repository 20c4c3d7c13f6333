"""Money in Cedar: JSON numbers with fractions are decimals (real cedarpy, schema always on).

The reference policy: refunds up to $50 are allowed, refunds over $50 need a human.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from keel.errors import InvalidPolicy
from keel.policy.authorizer import Authorizer, AuthzRequest
from keel.policy.examples import examples
from keel.policy.schema import ToolSignature

REFUND = ToolSignature("issue_refund", "payments", {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number"},  # dollars, with cents: 49.99
        "lines": {"type": "array", "items": {
            "type": "object", "properties": {"price": {"type": "number"}},
            "required": ["price"]}},
        "fees": {"type": "object", "properties": {"shipping": {"type": "number"}}},
    },
    "required": ["order_id", "amount"],
})

REFUNDS_OVER_50_NEED_APPROVAL = """
@id("refunds-up-to-50")
permit(principal, action == Action::"issue_refund", resource)
when { context.amount >= decimal("0.00") && context.amount <= decimal("50.00") };

@id("refunds-over-50-need-approval") @approval("required")
permit(principal, action == Action::"issue_refund", resource)
when { context.amount > decimal("50.00") };
"""

NOW = {"hour": 11, "minute": 0, "weekday": 2, "day": 3, "month": 3, "year": 2026,
       "epoch": 1772528400}


def refund(args: object) -> AuthzRequest:
    return AuthzRequest(agent="support-bot", tenant="acme", tool="issue_refund",
                        arguments=args, now=NOW)


@pytest.fixture
def authz() -> Authorizer:
    a = Authorizer([REFUND])
    a.load(REFUNDS_OVER_50_NEED_APPROVAL, 1)
    assert a.snapshot.policies is not None, a.snapshot.problem
    return a


@pytest.mark.parametrize("amount, outcome, policy", [
    (49.99, "allow", "refunds-up-to-50"),
    (50, "allow", "refunds-up-to-50"),
    (50.0, "allow", "refunds-up-to-50"),
    (50.01, "approval", "refunds-over-50-need-approval"),
    (5000, "approval", "refunds-over-50-need-approval"),
    (0.0001, "allow", "refunds-up-to-50"),
    (-100, "deny", ""),  # a refund the other way round: no permit states it
])
def test_refunds_over_50_dollars_need_approval(authz: Authorizer, amount: float,
                                               outcome: str, policy: str) -> None:
    d = authz.authorize(refund({"order_id": "o1", "amount": amount}))
    assert (d.outcome, d.policy_ids) == (outcome, (policy,) if policy else ()), d.reason


def test_schema_says_which_attributes_are_decimal(authz: Authorizer) -> None:
    text = authz.schema_text
    assert "amount: __cedar::decimal" in text
    assert "price: __cedar::decimal" in text and "shipping?: __cedar::decimal" in text


def test_nested_decimals_in_records_and_sets(authz: Authorizer) -> None:
    authz.load(REFUNDS_OVER_50_NEED_APPROVAL + """
@id("no-expensive-shipping")
forbid(principal, action == Action::"issue_refund", resource)
when { context has fees && context.fees has shipping
       && context.fees.shipping.greaterThan(decimal("9.99")) };
""", 2)
    ok = authz.authorize(refund({"order_id": "o", "amount": 1.5, "fees": {"shipping": 9.99},
                                 "lines": [{"price": 0.75}, {"price": 0.75}]}))
    assert ok.allowed, ok.reason
    assert ok.context is not None and ok.context["lines"][0]["price"] == \
        {"__extn": {"fn": "decimal", "arg": "0.75"}}
    no = authz.authorize(refund({"order_id": "o", "amount": 1.5, "fees": {"shipping": 10}}))
    assert no.outcome == "deny" and no.policy_ids == ("no-expensive-shipping",)


@pytest.mark.parametrize("args, why", [
    ({"order_id": "o", "amount": 0.00001}, "more than 4 digits"),  # would round to 0.0000
    ({"order_id": "o", "amount": 49.99999}, "more than 4 digits"),  # would round to 50.0000
    ({"order_id": "o", "amount": 1e16}, "outside Cedar's decimal range"),
    ({"order_id": "o", "amount": -1e16}, "outside Cedar's decimal range"),
    ({"order_id": "o", "amount": 10**30}, "outside Cedar's decimal range"),
    ({"order_id": "o", "amount": 1, "lines": [{"price": 1.23456}]}, "lines[0].price"),
    ({"order_id": "o", "amount": "49.99"}, "must be a JSON number"),  # not a string
    ({"order_id": "o", "amount": True}, "must be a JSON number"),  # nor a boolean
    ({"order_id": "o"}, "amount"),  # required
])
def test_values_that_do_not_fit_a_decimal_are_denied(authz: Authorizer, args: object,
                                                     why: str) -> None:
    authz.load('@id("allow-all") permit(principal, action, resource);', 3)
    d = authz.authorize(refund(args))
    assert d.outcome == "deny" and why in d.reason, d.reason


def test_decimal_compared_with_an_integer_fails_validation_with_a_hint(
        authz: Authorizer) -> None:
    with pytest.raises(InvalidPolicy, match="greaterThan"):
        authz.validate('permit(principal, action == Action::"issue_refund", resource) '
                       'when { context.amount > 50 };')


def test_the_rewrite_keeps_ids_order_and_other_comparisons(authz: Authorizer) -> None:
    snap = authz.validate(REFUNDS_OVER_50_NEED_APPROVAL + """
@id("long-compare-untouched")
forbid(principal, action == Action::"issue_refund", resource)
when { context.now.hour < 6 || context.amount >= decimal("10000.0") };
""")
    assert snap.text.startswith("\n@id(\"refunds-up-to-50\")")  # stored as written
    assert list(snap.labels.values()) == ["refunds-up-to-50", "refunds-over-50-need-approval",
                                          "long-compare-untouched"]
    d = authz.authorize(refund({"order_id": "o", "amount": 10000}), snap)
    assert d.outcome == "deny" and d.policy_ids == ("long-compare-untouched",)


def test_review_examples_handle_decimal_fields(authz: Authorizer) -> None:
    ex = examples(authz, authz.snapshot)
    sides = {(str(e.value), e.decision.outcome) for e in ex if e.field == "amount"}
    assert sides == {("50.00", "allow"), ("50.01", "approval"),  # both sides of each bound
                     ("0.00", "allow"), ("-0.01", "deny")}


def test_policy_test_cases_and_shadow_replay_carry_decimals(authz: Authorizer,
                                                            tmp_path: Path) -> None:
    """`keel policy test` (YAML numbers) and `keel policy shadow` (logged contexts)."""
    import orjson

    from keel.policy.cases import load_cases, run_cases, shadow

    f = tmp_path / "cases.yaml"
    f.write_text("- {name: small, tool: issue_refund, arguments: {order_id: o, amount: 49.99},"
                 " expect: allow}\n"
                 "- {name: big, tool: issue_refund, arguments: {order_id: o, amount: 50.01},"
                 " expect: approval}\n"
                 "- {name: too precise, tool: issue_refund,"
                 " arguments: {order_id: o, amount: 0.00001}, expect: deny}\n")
    results = run_cases(authz, authz.snapshot, load_cases(f), ZoneInfo("UTC"))
    assert [r.passed for r in results] == [True, True, True]
    logged = authz.authorize(refund({"order_id": "o", "amount": 60}))
    row = {"id": "d1", "ts": 0.0, "agent": "support-bot", "tenant": "acme",
           "action": "issue_refund", "decision": logged.outcome, "policy_ids": "[]",
           "context": orjson.dumps(logged.context).decode()}
    stricter = authz.validate('@id("cap") permit(principal, action == Action::"issue_refund", '
                              'resource) when { context.amount <= decimal("55.00") };')
    report = shadow(authz, stricter, [row])
    assert report.replayed == 1 and [(c.before, c.after) for c in report.changes] == \
        [("approval", "deny")]
