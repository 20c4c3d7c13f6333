"""Versioned policy store (SQLite and PostgreSQL) and the NL->Cedar repair loop (scripted)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from test_policy_authorizer import CRM

from keel.errors import InvalidPolicy, NotFound
from keel.policy.authorizer import Authorizer
from keel.policy.draft import PolicyDrafter
from keel.policy.store import PolicyStore
from keel.storage.migrations import migrate
from keel.storage.sql import Database

GOOD = '@id("refunds") permit(principal, action == Action::"issue_refund", resource) ' \
       'when { context.amount_cents <= 5000 };'
BETTER = '@id("reads") permit(principal, action == Action::"read_customer", resource);'


def _store(url: str) -> PolicyStore:
    from keel.policy import store

    db = Database(url)
    migrate(db, store.MIGRATIONS)
    return PolicyStore(db)


def _exercise(store: PolicyStore) -> None:
    authz = Authorizer(CRM)
    assert store.active() is None
    with pytest.raises(NotFound):
        store.rollback()
    v1 = store.apply(GOOD, validate=authz.validate, note="first")
    with pytest.raises(InvalidPolicy, match="amount_cents"):  # invalid: nothing changes
        store.apply('permit(principal, action == Action::"read_customer", resource) '
                    'when { context.amount_cents > 1 };', validate=authz.validate)
    assert store.active_version() == v1.version == 1
    store.apply(BETTER, validate=authz.validate)
    store.apply(GOOD + "\n" + BETTER, validate=authz.validate)
    assert store.active_version() == 3
    assert store.rollback().version == 2
    v4 = store.apply(BETTER + "\n// v4", validate=authz.validate)
    assert v4.version == 4
    # the stack: rolling back from 4 returns to 2 (what was active), then to 1
    assert store.rollback().version == 2
    assert store.rollback().version == 1
    with pytest.raises(NotFound):
        store.rollback()
    assert [v.version for v in store.history()] == [4, 3, 2, 1]
    assert store.get(1).active and store.get(1).note == "first"


def test_store_sqlite(tmp_path: Path) -> None:
    _exercise(_store(f"sqlite:///{tmp_path / 'p.db'}"))


@pytest.mark.services
def test_store_postgres(postgres_clean_url: str) -> None:
    _exercise(_store(postgres_clean_url))


class ScriptedFakeModel:
    """Scripted answers for testing keel's repair loop (not a model)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.seen: list[list[dict[str, str]]] = []

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        self.seen.append([dict(m) for m in messages])
        return self.answers[len(self.seen) - 1]


async def test_draft_repair_loop_with_scripted_fake_model() -> None:
    fake = ScriptedFakeModel([
        "not json at all",
        orjson.dumps({"policy": "permit(principal, action, resource) when { context.x > 1 };"})
        .decode(),
        orjson.dumps({"policy": "@id(\"no-big-refunds\") forbid(principal, action == "
                                "Action::\"issue_refund\", resource) when "
                                "{ context.amount_cents > 5000 };\n" + GOOD}).decode(),
    ])
    result = await PolicyDrafter(Authorizer(CRM), fake, repairs=3).draft(
        "agents can never issue refunds over $50")
    assert result.ok, result.error
    assert [a.problem is None for a in result.attempts] == [False, False, True]
    assert "not JSON" in (result.attempts[0].problem or "")
    # Cedar's validation error went back to the model in the next round
    assert "context.x" in fake.seen[2][-1]["content"] or "`x`" in fake.seen[2][-1]["content"]
    assert "forbid" in result.policy and "5000" in result.policy
    sides = {(e.value, e.decision.outcome) for e in result.examples if e.field == "amount_cents"}
    assert (5001, "deny") in sides and (5000, "allow") in sides


async def test_draft_gives_up_after_three_repairs_with_scripted_fake_model() -> None:
    fake = ScriptedFakeModel([orjson.dumps({"policy": "permit("}).decode()] * 4)
    result = await PolicyDrafter(Authorizer(CRM), fake, repairs=3).draft("anything")
    assert not result.ok and len(result.attempts) == 4 and len(fake.seen) == 4
    assert result.error and "4 attempts" in result.error and "does not parse" in result.error
    with pytest.raises(InvalidPolicy):
        await PolicyDrafter(Authorizer(CRM), fake).draft("  ")
