"""Guarded calls per second with 1, 8 and 64 concurrent callers (threads, and asyncio tasks), per store.

    .venv/bin/python benchmarks/throughput.py [--stores memory,sqlite,postgres,redis] [--seconds 3]

PostgreSQL and Redis come from COSTGUARD_BENCH_POSTGRES_URL / COSTGUARD_BENCH_REDIS_URL (or the
test URLs). Each call reserves against 3 ceilings x 2 periods and commits its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path

from costguard import Ceiling, Guard, Limit, Period, Unit
from costguard.model import make_match

# Per-call reservations, the figures docs/performance.md gives for this script (leased calls:
# hot_row.py and overhead.py --leases); an older checkout has no `leases` option.
PER_CALL = {"leases": False} if "leases" in inspect.signature(Guard).parameters else {}

LIMITS = (Limit(Period.MONTH, Unit.USD, 10**15), Limit(Period.DAY, Unit.USD, 10**15))
CEILINGS = [
    Ceiling(make_match({"feature": "chat"}), LIMITS),
    Ceiling(make_match({"feature": "chat", "customer": "*"}), LIMITS),
    Ceiling(make_match({"feature": "chat", "team": "*"}), LIMITS),
]


def threads(guard: Guard, workers: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    done = [0] * workers

    def loop(index: int) -> None:
        while time.monotonic() < stop:
            with guard.reserve("chat", estimate_usd=0.002, customer=f"c{index}", team="t") as r:
                r.commit(0.0015)
            done[index] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(done) / seconds


def tasks(guard: Guard, workers: int, seconds: float) -> float:
    async def main() -> int:
        stop = time.monotonic() + seconds
        done = [0] * workers

        async def loop(index: int) -> None:
            while time.monotonic() < stop:
                async with guard.areserve("chat", estimate_usd=0.002, customer=f"c{index}", team="t") as r:
                    await r.acommit(0.0015)
                done[index] += 1

        await asyncio.gather(*(loop(i) for i in range(workers)))
        return sum(done)

    return asyncio.run(main()) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    rd = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    tmp = Path(tempfile.mkdtemp(prefix="costguard-tput-"))
    print(f"{'store':<9} {'callers':>7} {'threads/s':>10} {'tasks/s':>10}")
    for store in args.stores.split(","):
        if store == "memory":
            url = "memory://"
        elif store == "sqlite":
            url = f"sqlite:///{tmp / 'tput.db'}?timeout_ms=60000"
        elif store == "postgres" and pg:
            url = f"{pg}{'&' if '?' in pg else '?'}prefix=tput{uuid.uuid4().hex[:6]}_&timeout_ms=30000"
        elif store == "redis" and rd:
            url = f"{rd}{'&' if '?' in rd else '?'}namespace=tput{uuid.uuid4().hex[:6]}&timeout_ms=2000"
        else:
            print(f"{store:<9} skipped (no URL)")
            continue
        for workers in (1, 8, 64):
            guard = Guard(url, ceilings=CEILINGS, **PER_CALL)
            per_thread = threads(guard, workers, args.seconds)
            per_task = tasks(guard, workers, args.seconds)
            guard.close()
            print(f"{store:<9} {workers:>7} {per_thread:>10.0f} {per_task:>10.0f}")


if __name__ == "__main__":
    main()
