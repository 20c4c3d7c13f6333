"""Traffic generator: carts at a steady rate, some with an (old) percentage discount code.

    python examples/checkout/traffic.py http://127.0.0.1:8080/svc/checkout --rps 50 --seconds 60

Prints one line per second: requests, 5xx, the share of 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter

import aiohttp

SKUS = ["sku-1", "sku-2", "sku-3"]


def cart(rng: random.Random, discount_share: float) -> dict[str, object]:
    body: dict[str, object] = {"items": [{"sku": rng.choice(SKUS), "qty": rng.randint(1, 3)}
                                         for _ in range(rng.randint(1, 3))]}
    if rng.random() < discount_share:
        body["discount_code"] = rng.choice(["SAVE10", "SAVE20"])
    return body


async def run(url: str, rps: float, seconds: float, discount_share: float, seed: int,
              counts: Counter[str] | None = None) -> Counter[str]:
    """Send POST ``url``/checkout at ``rps`` for ``seconds``; count statuses."""
    rng = random.Random(seed)
    counts = counts if counts is not None else Counter()
    interval = 1.0 / rps
    async with aiohttp.ClientSession() as s:
        async def one(body: dict[str, object]) -> None:
            try:
                async with s.post(url.rstrip("/") + "/checkout", json=body) as r:
                    await r.read()
                    counts[str(r.status)] += 1
            except aiohttp.ClientError:
                counts["error"] += 1

        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            t = asyncio.create_task(one(cart(rng, discount_share)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        await asyncio.gather(*tasks)
    return counts


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--rps", type=float, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--discount-share", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    counts: Counter[str] = Counter()
    job = asyncio.create_task(run(a.url, a.rps, a.seconds, a.discount_share, a.seed, counts))
    last = 0
    while not job.done():
        await asyncio.sleep(1)
        total = sum(counts.values())
        bad = sum(v for k, v in counts.items() if k.startswith("5") or k == "error")
        print(f"{total - last:5d} req/s  total {total}  5xx {bad} ({bad / max(total, 1):.1%})")
        last = total
    await job


if __name__ == "__main__":
    asyncio.run(main())
