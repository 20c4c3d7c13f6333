"""The embedded vector index shared by several processes (``serve --workers``, ``keel
worker``s): concurrent writers never collide on keys, and every process sees every write."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from keel.storage.vector_usearch import UsearchVectorIndex

DIM = 16
WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from keel.storage.vector_usearch import UsearchVectorIndex

    async def main(path, who):
        rng = np.random.default_rng(who)
        index = UsearchVectorIndex(path, "shared")
        await index.create(%(dim)d)
        for batch in range(10):
            vecs = rng.standard_normal((20, %(dim)d)).astype(np.float32)
            ids = [f"w{who}-{batch}-{i}" for i in range(20)]
            await index.upsert(ids, vecs, [{"w": str(who)}] * 20)
            # every writer also rewrites the same shared ids
            await index.upsert([f"s{i}" for i in range(5)], vecs[:5], [{"w": "shared"}] * 5)
            if batch %% 3 == 0:
                await index.delete([f"w{who}-{batch}-0"])
        await index.aclose()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
) % {"dim": DIM}


def test_processes_share_one_index(tmp_path: Path) -> None:
    path = tmp_path / "vec"

    async def open_early() -> UsearchVectorIndex:
        index = UsearchVectorIndex(path, "shared")
        await index.create(DIM)
        await index.upsert(["early"], np.ones((1, DIM), np.float32), [{"w": "parent"}])
        return index

    loop = asyncio.new_event_loop()
    try:
        early = loop.run_until_complete(open_early())
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(who)],
                             stderr=subprocess.PIPE, text=True)
            for who in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        expected = 1 + 4 * (10 * 20 - 4) + 5

        async def check(index: UsearchVectorIndex) -> None:
            assert await index.count() == expected
            for who in range(4):
                assert await index.count(filters={"w": str(who)}) == 10 * 20 - 4
            assert await index.count(filters={"w": "shared"}) == 5
            rng = np.random.default_rng(2)  # writer 2's first vectors
            first = rng.standard_normal((20, DIM)).astype(np.float32)
            hits = await index.search(first[7], 1)
            assert hits[0].id == "w2-0-7" and hits[0].score > 0.999

        loop.run_until_complete(check(early))  # a handle opened before the writers ran
        fresh = UsearchVectorIndex(path, "shared")  # and a new one (graph file from a child)
        loop.run_until_complete(check(fresh))
        loop.run_until_complete(early.aclose())
        loop.run_until_complete(fresh.aclose())
    finally:
        loop.close()
