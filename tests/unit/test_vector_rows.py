"""The partition matrices behind exact filtered search in the usearch vector index."""

from __future__ import annotations

import numpy as np

from keel.storage.vector_rows import PartitionRows, RowCache


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rows_grow_and_remove_and_rank_like_brute_force() -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 100)
    rows = PartitionRows(8, list(range(10)), vecs[:10])
    for key in range(10, 100):  # grows past its first capacity several times
        rows.add(key, vecs[key])
    for key in (0, 99, 50, 51, 7, 12345):  # first, last, middle, absent
        rows.remove(key)
    rows.add(5, vecs[0])  # an update keeps one row
    live = {k: vecs[k] for k in range(100) if k not in (0, 99, 50, 51, 7)}
    live[5] = vecs[0]
    assert len(rows) == len(live)
    q = unit(rng, 1)[0]
    want = sorted(live, key=lambda k: -float(live[k] @ q))
    got = rows.top(q, 7)
    assert [k for k, _ in got] == want[:7]
    assert all(abs(s - float(live[k] @ q)) < 1e-6 for k, s in got)
    assert [k for k, _ in rows.top(q, 1000)] == want  # k above the size: all, ranked
    assert PartitionRows(8, [], np.zeros((0, 8), np.float32)).top(q, 3) == []


def test_cache_keeps_partitions_current_and_within_its_budget() -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 40)
    cache = RowCache(budget_rows=25)
    builds: list[str] = []

    def build(tag: str, keys: list[int]):  # type: ignore[no-untyped-def]
        def do():  # type: ignore[no-untyped-def]
            builds.append(tag)
            return keys, vecs[keys]
        return do

    a = cache.get(("p", "a"), build("a", list(range(10))), 8)
    assert a is not None and len(a) == 10
    cache.added(10, [("p", "a"), ("p", "unheld")], vecs[10])
    cache.removed(3, [("p", "a")])
    assert sorted(k for k, _ in a.top(vecs[0], 100)) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert cache.get(("p", "a"), build("a", []), 8) is a  # held: not built again
    b = cache.get(("p", "b"), build("b", list(range(20, 30))), 8)
    assert b is not None
    # a third partition pushes the total over 25 rows: the least recently searched goes
    c = cache.get(("p", "c"), build("c", list(range(30, 40))), 8)
    assert c is not None
    assert cache.get(("p", "a"), build("a2", list(range(10))), 8) is not a
    assert builds == ["a", "b", "c", "a2"]
    # a partition larger than the whole budget is never held
    assert cache.get(("p", "huge"), build("huge", list(range(30))), 8) is None
