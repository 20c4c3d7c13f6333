"""Approvals with keel's tables and the DBOS system database on a real PostgreSQL 15."""

from __future__ import annotations

from pathlib import Path

from approval_helpers import ActionLog
from conftest import make_settings
from keel.app import open_database
from keel.approvals.engine import Decider
from keel.approvals.models import Proposal
from keel.approvals.service import ApprovalsService


async def test_approve_and_timeout_on_postgres(tmp_path: Path, postgres_clean_url: str) -> None:
    s = make_settings(tmp_path, database_url=postgres_clean_url)
    s.approvals.system_database_url = postgres_clean_url
    db = open_database(s)
    svc = ApprovalsService(s, db)
    log = ActionLog(tmp_path / "actions.db")
    log.register(svc.registry)
    await svc.start()  # a Postgres system database launches DBOS at start-up
    try:
        assert svc.runtime.launched
        h = await svc.engine.request(Proposal(action="pay", arguments={"to": "x"},
                                              amount=4000, risk_level="HIGH"))
        assert h.approval.status == "pending"
        await svc.engine.decide("approve", Decider("pg-test", "api"), approval_id=h.id)
        a = await h.wait(10)
        assert a.outcome == "executed" and len(log.runs()) == 1
        t = await svc.engine.request(Proposal(action="pay", amount=4000, timeout_s=0.5))
        b = await t.wait(10)
        assert b.status == "timed_out" and b.outcome == "timed_out"
    finally:
        await svc.stop()
        db.dispose()
