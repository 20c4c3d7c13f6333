"""A reasoning run with keel's tables and the DBOS system database on a real PostgreSQL
(scripted upstream: keel's logic): lanes claim samples concurrently on Postgres, and every
sample is requested exactly once."""

from __future__ import annotations

from pathlib import Path

from test_reasoning_fake_llm import reasoner, settings_for

from keel.app import build_services, running
from keel.gateway.context import Principal
from keel.reasoning.service import ReasoningService
from reasoning_upstream import ReasoningUpstream


async def test_lanes_claim_every_sample_once_on_postgres(tmp_path: Path,
                                                         postgres_clean_url: str) -> None:
    up = ReasoningUpstream(answers=["alpha", "beta"], delay_s=0.02).start()
    try:
        s = settings_for(tmp_path, up, [reasoner(n=24, max_concurrency=6)])
        s.database_url = postgres_clean_url
        s.approvals.system_database_url = postgres_clean_url
        svc = build_services(s)
        async with running(svc):
            service = svc.get(ReasoningService)
            run = await service.submit(Principal("k", "acme", "bot"), "deep",
                                       [{"role": "user", "content": "Q"}])
            done = await service.wait(run.id)
        assert done.status == "succeeded", done.error
        assert sorted(k for k in up.calls if k.startswith("worker:")) == sorted(
            f"worker:{i}" for i in range(24))
        assert all(up.calls[f"worker:{i}"] == 1 for i in range(24))
        assert {x["lane"] for x in done.samples} <= set(range(6))
    finally:
        up.stop()
