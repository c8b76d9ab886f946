"""Overhead of a guarded call (3 ceilings x 2 periods) against a bare call and each store's floor.

    .venv/bin/python benchmarks/overhead.py [--stores memory,sqlite,postgres,redis] [--calls N]
                                            [--leases off|on|both] [--rounds 3]

Floors, measured in the same run: memory — a dict update under a lock; SQLite/PostgreSQL — one
conditional `UPDATE … WHERE spent + :amt <= :limit` transaction; Redis — two raw EVALSHA of a
trivial script (a reserve and a commit). The guarded call is measured with the default
`commit: sync` (reserve and commit on the request path) and with `commit: background`.
PostgreSQL and Redis come from COSTGUARD_BENCH_POSTGRES_URL / COSTGUARD_BENCH_REDIS_URL (falling
back to the test URLs); a store whose URL is missing is left out.

`--leases` (default `off`): this table is of per-call reservations, so its guards are built with
`leases=False` (the default of a Guard since leased budget). `on` prints instead a second table: the
same guarded call on PostgreSQL and Redis with leases on — one hot feature whose counters are served
from slices reserved in the store, measured after a warm-up — next to the guarded call on
`memory://`, in `--rounds` interleaved rounds (the lowest median of each); `both` prints both tables.
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
    return timed_us(fn, calls, warmup)[0]


def timed_us(fn: Callable[[], object], calls: int, warmup: int = 200) -> tuple[float, float, float]:
    """(median, mean, process CPU per call) of `calls` timed calls after `warmup` untimed ones, in µs.
    The CPU time is the whole process's: it counts what background threads do for the calls."""
    for _ in range(warmup):
        fn()
    samples = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    return statistics.median(samples) * 1e6, statistics.fmean(samples) * 1e6, cpu / calls * 1e6


def guarded(url: str, commit: str, *, leases: bool = False) -> tuple[Guard, Callable[[], object]]:
    guard = Guard(url, ceilings=CEILINGS, commit=commit, leases=leases)  # type: ignore[arg-type]

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


def store_url(store: str, pg: str | None, rd: str | None) -> str | None:
    """A fresh prefix (PostgreSQL) or namespace (Redis) on the bench server; None without its URL."""
    if store == "postgres" and pg:
        return f"{pg}{'&' if '?' in pg else '?'}prefix=bench{uuid.uuid4().hex[:6]}_"
    if store == "redis" and rd:
        return f"{rd}{'&' if '?' in rd else '?'}namespace=bench{uuid.uuid4().hex[:6]}"
    return None


def leased(stores: list[str], pg: str | None, rd: str | None, calls: int, rounds: int) -> None:
    """The guarded call of one hot feature with leases on (PostgreSQL, Redis) against `memory://`."""
    series: dict[str, tuple[Guard, Callable[[], object]]] = {"memory": guarded("memory://", "sync")}
    for store in stores:
        url = store_url(store, pg, rd) if store in ("postgres", "redis") else None
        if url is None:
            if store in ("postgres", "redis"):
                print(f"{store:<10} skipped: set COSTGUARD_BENCH_{store.upper()}_URL")
            continue
        series[store] = guarded(url, "sync", leases=True)
    for _, call in series.values():  # warm up: the feature's counter groups get hot and leased
        for _ in range(2000):
            call()
    best: dict[str, tuple[float, float, float]] = {}
    for _ in range(rounds):
        for name, (_, call) in series.items():
            now = timed_us(call, calls, warmup=100)
            old = best.get(name)
            best[name] = (min(now[0], old[0]), min(now[1], old[1]), min(now[2], old[2])) if old else now
    for guard, _ in series.values():
        guard.close()
    memory = best["memory"][0]
    cpu_memory = best["memory"][2]
    print(f"\nhot feature, leases on (after warm-up): lowest of {rounds} rounds of {calls} calls each")
    print(f"{'store':<18} {'median µs':>10} {'mean µs':>9} {'cpu µs':>8} {'/ memory':>9} {'cpu / memory':>13}")
    for name, (median, mean, cpu) in best.items():
        label = "memory" if name == "memory" else f"{name}, leased"
        print(f"{label:<18} {median:>10.1f} {mean:>9.1f} {cpu:>8.1f} {median / memory:>9.2f} {cpu / cpu_memory:>13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--leases", choices=("off", "on", "both"), default="off")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the leased table")
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    rd = os.environ.get("COSTGUARD_BENCH_REDIS_URL") or os.environ.get("COSTGUARD_TEST_REDIS_URL")
    tmp = Path(tempfile.mkdtemp(prefix="costguard-bench-"))
    if args.leases == "on":
        leased(args.stores.split(","), pg, rd, args.calls, args.rounds)
        return

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
    if args.leases == "both":
        leased(args.stores.split(","), pg, rd, args.calls, args.rounds)


if __name__ == "__main__":
    main()
