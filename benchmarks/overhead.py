"""Overhead of a guarded call (3 ceilings x 2 periods) against a bare call and each store's floor.

    .venv/bin/python benchmarks/overhead.py [--stores memory,sqlite,postgres,redis] [--calls N]

Floors, measured in the same run: memory — a dict update under a lock; SQLite/PostgreSQL — one
conditional `UPDATE … WHERE spent + :amt <= :limit` transaction; Redis — two raw EVALSHA of a
trivial script (a reserve and a commit). The guarded call is measured with the default
`commit: sync` (reserve and commit on the request path) and with `commit: background`.
PostgreSQL and Redis come from COSTGUARD_BENCH_POSTGRES_URL / COSTGUARD_BENCH_REDIS_URL (falling
back to the test URLs); a store whose URL is missing is left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from costguard import Ceiling, Guard, Limit, Period, Unit
from costguard.model import make_match

LIMITS = (Limit(Period.MONTH, Unit.USD, 10**15), Limit(Period.DAY, Unit.USD, 10**15))
CEILINGS = [
    Ceiling(make_match({"feature": "chat"}), LIMITS),
    Ceiling(make_match({"feature": "chat", "customer": "*"}), LIMITS),
    Ceiling(make_match({"feature": "chat", "team": "*"}), LIMITS),
]


def median_us(fn: Callable[[], object], calls: int, warmup: int = 200) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def guarded(url: str, commit: str) -> tuple[Guard, Callable[[], object]]:
    guard = Guard(url, ceilings=CEILINGS, commit=commit)  # type: ignore[arg-type]

    @guard.with_kill_switch("chat", estimate=0.002, cost=0.0015, labels={"customer": "acme", "team": "search"})
    def call() -> int:
        return 1

    return guard, call


def memory_floor() -> Callable[[], object]:
    lock = threading.Lock()
    counters: dict[str, int] = {}

    def floor() -> None:
        with lock:
            counters["chat"] = counters.get("chat", 0) + 2000

    return floor


def sql_floor(url: str) -> tuple[Callable[[], object], Callable[[], None]]:
    import sqlalchemy as sa

    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    table = f"bench_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (key TEXT PRIMARY KEY, spent BIGINT NOT NULL)"))
        conn.execute(sa.text(f"INSERT INTO {table} VALUES ('chat', 0)"))
    update = sa.text(f"UPDATE {table} SET spent = spent + :amt WHERE key = 'chat' AND spent + :amt <= :lim")

    def floor() -> None:
        with engine.begin() as conn:
            conn.execute(update, {"amt": 2000, "lim": 10**15})

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()

    return floor, drop


def redis_floor(url: str) -> Callable[[], object]:
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    sha = client.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = "{bench}:floor:" + uuid.uuid4().hex

    def floor() -> None:
        client.evalsha(sha, 1, key, 2000)
        client.evalsha(sha, 1, key, -500)

    return floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    rd = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    tmp = Path(tempfile.mkdtemp(prefix="costguard-bench-"))

    def bare() -> int:
        return 1

    bare_us = median_us(bare, args.calls * 10)
    print(f"bare call: {bare_us:.2f} µs (median of {args.calls * 10})")
    header = f"{'store':<10} {'floor µs':>9} {'sync µs':>9} {'bg µs':>9} {'sync-bare':>10}"
    header += f" {'sync/floor':>11} {'bg/floor':>9}"
    print(header)
    for store in args.stores.split(","):
        cleanup: Callable[[], None] | None = None
        if store == "memory":
            url, floor = "memory://", memory_floor()
        elif store == "sqlite":
            url = f"sqlite:///{tmp / 'bench.db'}"
            floor, cleanup = sql_floor(f"sqlite:///{tmp / 'floor.db'}")
        elif store == "postgres":
            if not pg:
                print(f"{store:<10} skipped: set COSTGUARD_BENCH_POSTGRES_URL")
                continue
            sep = "&" if "?" in pg else "?"
            url = f"{pg}{sep}prefix=bench{uuid.uuid4().hex[:6]}_"
            floor, cleanup = sql_floor(pg.split("?", 1)[0])
        elif store == "redis":
            if not rd:
                print(f"{store:<10} skipped: set COSTGUARD_BENCH_REDIS_URL")
                continue
            sep = "&" if "?" in rd else "?"
            url = f"{rd}{sep}namespace=bench{uuid.uuid4().hex[:6]}"
            floor = redis_floor(rd)
        else:
            raise SystemExit(f"unknown store {store!r}")
        calls = args.calls if store != "memory" else args.calls * 5
        floor_us = median_us(floor, calls)
        sync_guard, sync_call = guarded(url, "sync")
        sync_us = median_us(sync_call, calls)
        sync_guard.close()
        bg_guard, bg_call = guarded(url, "background")
        bg_us = median_us(bg_call, calls)
        bg_guard.close()
        if cleanup is not None:
            cleanup()
        print(
            f"{store:<10} {floor_us:>9.1f} {sync_us:>9.1f} {bg_us:>9.1f} {sync_us - bare_us:>10.1f} "
            f"{sync_us / floor_us:>11.2f} {bg_us / floor_us:>9.2f}"
        )


if __name__ == "__main__":
    main()
