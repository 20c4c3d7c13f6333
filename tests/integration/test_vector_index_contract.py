"""One contract for every VectorIndex backend, run against the real stores.

``usearch`` runs on temp files (reopen = a new object on the same files); ``redis`` on
the Valkey + RediSearch server the ``services`` plugin starts (reopen = a new client).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from keel.errors import ConfigError, InvalidRequest
from keel.ports.vector_index import VectorIndex
from keel.storage.vector_redis import RedisVectorIndex
from keel.storage.vector_usearch import UsearchVectorIndex
from keel.storage.vectors import open_vector_index

DIM = 32
BACKENDS = [pytest.param("usearch"), pytest.param("redis", marks=pytest.mark.services)]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class Opener:
    def __init__(self, factory: Callable[[], VectorIndex]) -> None:
        self.factory = factory
        self.opened: list[VectorIndex] = []

    def __call__(self) -> VectorIndex:
        index = self.factory()
        self.opened.append(index)
        return index


@pytest.fixture(params=BACKENDS)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    if request.param == "usearch":
        op = Opener(lambda: UsearchVectorIndex(tmp_path / "vec", "contract"))
    else:
        url: str = request.getfixturevalue("redis_clean_url")
        op = Opener(lambda: RedisVectorIndex(url, "contract"))
    yield op
    for index in op.opened:
        await index.aclose()


@pytest.fixture
async def index(opener: Opener) -> VectorIndex:
    idx = opener()
    await idx.create(DIM)
    return idx


async def test_create_is_idempotent_and_checks_dim(opener: Opener) -> None:
    idx = opener()
    await idx.create(DIM)
    await idx.create(DIM)
    with pytest.raises(InvalidRequest, match="dim"):
        await idx.create(DIM + 1)
    assert await idx.count() == 0


async def test_empty_and_uncreated_search(opener: Opener) -> None:
    idx = opener()
    q = unit(np.random.default_rng(1), 1)[0]
    assert await idx.search(q, 5) == []
    assert await idx.count() == 0
    with pytest.raises(InvalidRequest, match="create"):
        await idx.upsert(["a"], unit(np.random.default_rng(1), 1), [{}])
    await idx.create(DIM)
    assert await idx.search(q, 5) == []
    assert await idx.search(q, 5, filters={"tenant": "a"}) == []


async def test_search_matches_exact_numpy(index: VectorIndex) -> None:
    rng = np.random.default_rng(7)
    data = unit(rng, 500)
    ids = [f"doc-{i}" for i in range(500)]
    await index.upsert(ids, data, [{"n": i, "tenant": "t"} for i in range(500)])
    assert await index.count() == 500
    recalls = []
    for q in unit(rng, 30):
        hits = await index.search(q, 10)
        assert len(hits) == 10
        exact = np.argsort(-(data @ q))[:10]
        recalls.append(len({ids[i] for i in exact} & {h.id for h in hits}) / 10)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        for h in hits:
            assert h.score == pytest.approx(float(data[int(h.metadata["n"])] @ q), abs=1e-4)
            assert h.metadata == {"n": int(h.id.split("-")[1]), "tenant": "t"}
    assert np.mean(recalls) >= 0.9
    top = await index.search(data[42] * 3.0, 1)  # scale does not matter for cosine
    assert top[0].id == "doc-42"
    assert top[0].score == pytest.approx(1.0, abs=1e-4)


async def test_partitions_never_leak(index: VectorIndex) -> None:
    rng = np.random.default_rng(3)
    big = unit(rng, 400)
    await index.upsert(
        [f"b{i}" for i in range(400)], big, [{"tenant": "B", "ns": "x"} for _ in range(400)]
    )
    # Tenant A has three entries, one with exactly B's vector; a wrong namespace too.
    small = unit(rng, 3)
    await index.upsert(
        ["a0", "a1", "a2", "a-other-ns"],
        np.vstack([big[0], small[:2], big[0]]),
        [{"tenant": "A", "ns": "x"}] * 3 + [{"tenant": "A", "ns": "y"}],
    )
    hits = await index.search(big[0], 10, filters={"tenant": "A", "ns": "x"})
    assert hits[0].id == "a0"
    assert {h.id for h in hits} == {"a0", "a1", "a2"}  # the whole partition, no more
    assert all(h.metadata["tenant"] == "A" and h.metadata["ns"] == "x" for h in hits)
    only_b = await index.search(big[0], 10, filters={"tenant": "B"})
    assert len(only_b) == 10 and all(h.id.startswith("b") for h in only_b)
    assert only_b[0].id == "b0"
    exact = np.argsort(-(big @ big[0]))[:10]
    assert [h.id for h in only_b] == [f"b{i}" for i in exact]
    assert await index.search(big[0], 5, filters={"tenant": "a"}) == []  # case-sensitive
    assert await index.search(big[0], 5, filters={"tenant": "C"}) == []
    assert await index.count({"tenant": "A"}) == 4
    assert await index.count({"tenant": "A", "ns": "x"}) == 3


async def test_upsert_replaces_an_id(index: VectorIndex) -> None:
    rng = np.random.default_rng(5)
    v = unit(rng, 2)
    await index.upsert(["x"], v[:1], [{"tenant": "old"}])
    await index.upsert(["x"], v[1:], [{"tenant": "new", "n": 2.5}])
    assert await index.count() == 1
    assert await index.count({"tenant": "old"}) == 0
    hits = await index.search(v[1], 3)
    assert len(hits) == 1 and hits[0].id == "x"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].metadata == {"tenant": "new", "n": 2.5}
    assert await index.search(v[1], 3, filters={"tenant": "old"}) == []


async def test_delete_delete_where_and_count(index: VectorIndex) -> None:
    rng = np.random.default_rng(9)
    n = 60
    meta = [{"tenant": "t1" if i % 2 else "t2", "ns": f"n{i % 3}"} for i in range(n)]
    await index.upsert([str(i) for i in range(n)], unit(rng, n), meta)
    assert await index.count() == n
    assert await index.count({"tenant": "t1"}) == 30
    assert await index.delete(["0", "1", "nope"]) == 2
    assert await index.count() == n - 2
    assert await index.delete([]) == 0
    assert await index.delete_where({"tenant": "t1", "ns": "n0"}) == 10  # 3, 9, ..., 57
    assert await index.count({"tenant": "t1", "ns": "n0"}) == 0
    assert await index.count({"tenant": "t1"}) == 29 - 10
    assert await index.delete_where({"tenant": "zzz"}) == 0
    with pytest.raises(InvalidRequest):
        await index.delete_where({})
    left = await index.search(unit(rng, 1)[0], 100, filters={"tenant": "t1"})
    assert len(left) == 19 and all(h.metadata["tenant"] == "t1" for h in left)


async def test_persists_across_reopen(opener: Opener) -> None:
    rng = np.random.default_rng(11)
    data = unit(rng, 50)
    first = opener()
    await first.create(DIM)
    await first.upsert([f"p{i}" for i in range(50)], data, [{"tenant": "t"}] * 50)
    await first.delete(["p0"])
    await first.aclose()
    second = opener()
    await second.create(DIM)  # idempotent on the reopened index
    assert await second.count() == 49
    assert (await second.search(data[7], 1, filters={"tenant": "t"}))[0].id == "p7"
    assert await second.search(data[0], 1) != [] and (await second.search(data[0], 1))[0].id != "p0"
    with pytest.raises(InvalidRequest):
        await second.upsert(["z"], unit(rng, 1, DIM + 1), [{}])


async def test_usearch_recovers_without_a_clean_graph(tmp_path: Path) -> None:
    """A crash after a write leaves the saved graph stale: reopen rebuilds from SQLite."""
    rng = np.random.default_rng(13)
    data = unit(rng, 20)
    idx = UsearchVectorIndex(tmp_path, "crash")
    await idx.create(DIM)
    await idx.upsert([f"c{i}" for i in range(10)], data[:10], [{}] * 10)
    await idx.aclose()  # clean graph with 10 entries
    idx = UsearchVectorIndex(tmp_path, "crash")
    await idx.upsert([f"c{i}" for i in range(10, 20)], data[10:], [{}] * 10)
    # "crash": never closed, so the graph file on disk still has 10 entries.
    again = UsearchVectorIndex(tmp_path, "crash")
    assert await again.count() == 20
    assert (await again.search(data[15], 1))[0].id == "c15"
    await again.aclose()
    (tmp_path / "crash.usearch").write_bytes(b"garbage")
    third = UsearchVectorIndex(tmp_path, "crash")
    assert (await third.search(data[3], 1))[0].id == "c3"
    await third.aclose()


ODD_TAGS = ["acme-corp", "a.b.c", "with space", "ns:one:two", "{braces}|pipe", "ünï", "", "*"]


async def test_tags_with_odd_characters(index: VectorIndex) -> None:
    rng = np.random.default_rng(17)
    data = unit(rng, len(ODD_TAGS))
    await index.upsert(
        [f"odd/{t}" for t in ODD_TAGS], data, [{"tenant": t, "ns": t} for t in ODD_TAGS]
    )
    for i, tag in enumerate(ODD_TAGS):
        hits = await index.search(data[(i + 1) % len(data)], 10, filters={"tenant": tag})
        assert [h.id for h in hits] == [f"odd/{tag}"], tag
        assert await index.count({"tenant": tag, "ns": tag}) == 1
    assert await index.delete_where({"tenant": "a.b.c"}) == 1
    assert await index.count() == len(ODD_TAGS) - 1


async def test_bad_input_is_a_clear_error(index: VectorIndex) -> None:
    rng = np.random.default_rng(19)
    with pytest.raises(InvalidRequest, match=r"\(n, 32\)"):
        await index.upsert(["a"], unit(rng, 1, DIM + 1), [{}])
    with pytest.raises(InvalidRequest, match=r"\(32,\)"):
        await index.search(unit(rng, 1, 16)[0], 3)
    with pytest.raises(InvalidRequest, match="one id"):
        await index.upsert(["a", "b"], unit(rng, 1), [{}])
    with pytest.raises(InvalidRequest, match="zero"):
        await index.upsert(["a"], np.zeros((1, DIM), np.float32), [{}])
    with pytest.raises(InvalidRequest, match="str"):
        await index.search(unit(rng, 1)[0], 3, filters={"n": 1})  # type: ignore[dict-item]
    assert await index.count() == 0


async def test_open_vector_index_by_url(tmp_path: Path) -> None:
    for url in ("embedded://", f"sqlite:///{tmp_path}/keel.db"):
        idx = open_vector_index(url, "cache", tmp_path)
        assert isinstance(idx, UsearchVectorIndex)
        await idx.create(4)
        await idx.aclose()
    assert (tmp_path / "vectors" / "cache.vectors.db").is_file()
    redis_idx = open_vector_index("valkey://:s3cret@127.0.0.1:1/0", "cache", tmp_path)
    assert isinstance(redis_idx, RedisVectorIndex) and "s3cret" not in repr(redis_idx)
    await redis_idx.aclose()
    with pytest.raises(ConfigError):
        open_vector_index("pgvector://x", "cache", tmp_path)


async def test_redis_errors_hide_the_password() -> None:
    from keel.errors import StorageError

    idx = RedisVectorIndex("redis://:hunter2@127.0.0.1:1/0", "x", connect_timeout_s=0.5)
    with pytest.raises(StorageError) as err:
        await idx.count()
    assert "hunter2" not in str(err.value) and "***" in str(err.value)
    await idx.aclose()


async def test_two_handles_see_each_others_writes(opener: Opener) -> None:
    """Two open handles on one index (two processes, or two gateway workers) stay in step:
    writes through one are searchable, countable and deletable through the other."""
    rng = np.random.default_rng(7)
    a = opener()
    await a.create(DIM)
    b = opener()
    await b.create(DIM)
    va, vb = unit(rng, 20), unit(rng, 20)
    await a.upsert([f"a{i}" for i in range(20)], va, [{"p": "x"}] * 20)
    await b.upsert([f"b{i}" for i in range(20)], vb, [{"p": "y"}] * 20)
    assert await a.count() == await b.count() == 40
    assert (await b.search(va[3], 1))[0].id == "a3"
    assert (await a.search(vb[5], 1, filters={"p": "y"}))[0].id == "b5"
    # The same id written through both handles is one entry (the last write wins).
    await a.upsert(["same"], va[:1], [{"p": "x"}])
    await b.upsert(["same"], vb[:1], [{"p": "y"}])
    assert await a.count() == 41
    hit = (await a.search(vb[0], 1, filters={"p": "y"}))
    assert hit and hit[0].id in ("same", "b0") and hit[0].score > 0.999
    assert await b.delete_where({"p": "x"}) == 20
    assert await a.count(filters={"p": "x"}) == 0
    assert await a.count() == 21


async def test_filtered_search_stays_exact_through_writes_by_two_handles(opener: Opener) -> None:
    """Searches of one partition are interleaved with upserts, replacements, deletes and
    flushes through two handles; every answer equals brute force over the live entries
    (the usearch backend answers small partitions from a cached matrix it keeps current)."""
    rng = np.random.default_rng(11)
    a = opener()
    await a.create(DIM)
    b = opener()
    await b.create(DIM)
    live: dict[str, tuple[str, np.ndarray]] = {}  # id -> (partition, vector)
    n = 0
    for step in range(40):
        writer = a if step % 2 else b
        part = "p1" if step % 3 else "p2"
        vecs = unit(rng, 8)
        ids = [f"e{n + i}" for i in range(8)]
        n += 8
        if live and step % 4 == 0:  # replace an existing id, moving it to this partition
            ids[0] = sorted(live)[step % len(live)]
        await writer.upsert(ids, vecs, [{"p": part}] * 8)
        live.update({i: (part, v) for i, v in zip(ids, vecs, strict=True)})
        if step % 5 == 4:
            gone = sorted(live)[: 3]
            assert await writer.delete(gone) == 3
            for i in gone:
                del live[i]
        if step == 30:
            assert await writer.delete_where({"p": "p2"}) == sum(
                1 for p, _ in live.values() if p == "p2")
            live = {i: pv for i, pv in live.items() if pv[0] != "p2"}
        for reader in (a, b):
            q = unit(rng, 1)[0]
            for wanted in ("p1", "p2"):
                members = [(i, float(v @ q)) for i, (p, v) in live.items() if p == wanted]
                members.sort(key=lambda m: -m[1])
                hits = await reader.search(q, 5, filters={"p": wanted})
                assert [h.id for h in hits] == [m[0] for m in members[:5]]
                for h, (_, score) in zip(hits, members, strict=False):
                    assert h.score == pytest.approx(score, abs=1e-4)
