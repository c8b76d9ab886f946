"""One hot feature under load: 8 processes x N threads calling one guarded feature, against the raw
throughput of one hot row (PostgreSQL `UPDATE … SET v = v + 1`) or key (Redis `EVALSHA` INCRBY)
at the same concurrency, with latency percentiles and calls that did not get a reservation.

    .venv/bin/python benchmarks/hot_row.py [--stores postgres,redis,sqlite] [--processes 8] [--threads 8]
                                           [--seconds 5]

Every call goes through `with_kill_switch` on one feature ceiling (month and day limits, and its
history counter) with default settings, and commits its cost. "unreserved" counts calls that ran
without a reservation or were refused because the store did not answer in time: under load both
should be 0. Only public API is used, so an older checkout can be measured the same way
(PYTHONPATH=<checkout>/src).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SPAWN = multiprocessing.get_context("spawn")


def guarded(url: str, threads: int, seconds: float, start: Any, results: Any) -> None:
    import logging

    import costguard
    from costguard import Blocked, Ceiling, Guard, Limit, Period, Priced, Unit
    from costguard.model import make_match

    logging.disable(logging.WARNING)
    limits = (Limit(Period.MONTH, Unit.USD, 10**15), Limit(Period.DAY, Unit.USD, 10**15))
    guard = Guard(url, ceilings=[Ceiling(make_match({"feature": "chat"}), limits)])

    @guard.with_kill_switch("chat", estimate=0.002)
    def paid() -> Priced[str]:
        decision = costguard.current_decision()
        return Priced("ok" if decision is None or decision.reason != "store_error" else "unreserved", 0.0015)

    paid()
    counts = [0] * threads
    unreserved = [0] * threads
    latencies: list[float] = []
    lock = threading.Lock()

    def loop(index: int, stop: float) -> None:
        mine = []
        while time.monotonic() < stop:
            began = time.perf_counter()
            try:
                if paid() == "unreserved":
                    unreserved[index] += 1
            except Blocked:
                unreserved[index] += 1
            mine.append(time.perf_counter() - began)
            counts[index] += 1
        with lock:
            latencies.extend(mine)

    start.wait()
    stop = time.monotonic() + seconds
    pool = [threading.Thread(target=loop, args=(i, stop)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    guard.close()
    results.put((sum(counts), sum(unreserved), latencies))


def raw_postgres(url: str, threads: int, seconds: float, start: Any, results: Any) -> None:
    import psycopg

    parts = urlsplit(url.replace("postgresql+psycopg", "postgresql"))
    dsn = f"host={parts.hostname} port={parts.port or 5432} user={parts.username} dbname={parts.path.lstrip('/')}"
    counts = [0] * threads
    start.wait()
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < stop:
                conn.execute("UPDATE costguard_bench_hot SET v = v + 1 WHERE k = 1")
                counts[index] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((sum(counts), 0, []))


def raw_redis(url: str, threads: int, seconds: float, start: Any, results: Any) -> None:
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    sha = client.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    counts = [0] * threads
    start.wait()
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < stop:
            client.evalsha(sha, 1, "costguard-bench-hot", 1)
            counts[index] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((sum(counts), 0, []))


def run(target: Any, url: str, processes: int, threads: int, seconds: float) -> tuple[float, int, list[float]]:
    start = SPAWN.Barrier(processes)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(url, threads, seconds, start, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=seconds + 300) for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(x for _, _, lats in outcomes for x in lats)
    return sum(n for n, _, _ in outcomes) / seconds, sum(u for _, u, _ in outcomes), latencies


def pct(values: list[float], q: float) -> str:
    return f"{values[min(len(values) - 1, int(len(values) * q))] * 1000:.0f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="postgres,redis,sqlite")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    rd = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    shape = f"{args.processes} processes x {args.threads} threads, {args.seconds:g} s"
    print(f"one hot feature, {shape}")
    columns = ("floor/s", "guarded/s", "ratio", "p50 ms", "p99 ms", "max ms")
    print(
        f"{'store':<9} "
        + " ".join(f"{c:>{w}}" for c, w in zip(columns, (8, 10, 6, 7, 7, 7), strict=True))
        + " unreserved"
    )
    for store in args.stores.split(","):
        floor: float | None = None
        if store == "postgres" and pg:
            import psycopg

            parts = urlsplit(pg.replace("postgresql+psycopg", "postgresql"))
            dsn = (
                f"host={parts.hostname} port={parts.port or 5432} user={parts.username} dbname={parts.path.lstrip('/')}"
            )
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS costguard_bench_hot (k int PRIMARY KEY, v bigint)")
                conn.execute("INSERT INTO costguard_bench_hot VALUES (1, 0) ON CONFLICT DO NOTHING")
            floor = run(raw_postgres, pg, args.processes, args.threads, args.seconds)[0]
            url = f"{pg}{'&' if '?' in pg else '?'}prefix=hot{uuid.uuid4().hex[:6]}_"
        elif store == "redis" and rd:
            floor = run(raw_redis, rd, args.processes, args.threads, args.seconds)[0]
            url = f"{rd}{'&' if '?' in rd else '?'}namespace=hot{uuid.uuid4().hex[:6]}"
        elif store == "sqlite":
            url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='costguard-hot-')) / 'hot.db'}"
        else:
            print(f"{store:<9} skipped (no URL)")
            continue
        rate, unreserved, latencies = run(guarded, url, args.processes, args.threads, args.seconds)
        ratio = f"{rate / floor:.2f}" if floor else "-"
        floor_text = f"{floor:.0f}" if floor else "-"
        print(
            f"{store:<9} {floor_text:>8} {rate:>10.0f} {ratio:>6} {pct(latencies, 0.5):>7} {pct(latencies, 0.99):>7} "
            f"{pct(latencies, 1.0):>7} {unreserved}"
        )


if __name__ == "__main__":
    main()
