"""Executor ids for gateway workers: one leader holds the configured id, others get their
own, and the leader sees a worker that died (its lock file is no longer locked)."""

from __future__ import annotations

from pathlib import Path

from keel.jobs.executors import ExecutorLease


def test_one_leader_others_own_ids_dead_ones_found(tmp_path: Path) -> None:
    a, b = ExecutorLease(tmp_path, "keel-gateway"), ExecutorLease(tmp_path, "keel-gateway")
    assert a.acquire() == "keel-gateway" and a.leader
    bid = b.acquire()
    assert bid.startswith("keel-gateway-") and not b.leader
    assert a.dead() == [] and b.dead() == []  # b is alive; only the leader scans
    assert b._fh is not None
    b._fh.close()  # b's process dies (kill -9 drops its lock; the file stays)
    dead = a.dead()
    assert [d for d, _ in dead] == [bid]
    a.forget(*dead[0])
    assert not (tmp_path / f"{bid}.lock").exists() and a.dead() == []
    a.release()
    c = ExecutorLease(tmp_path, "keel-gateway")
    assert c.acquire() == "keel-gateway"  # the next process leads once the leader is gone
    c.release()
