"""A check's cost does not grow with history: costguard's counter read vs the naive SUM over past calls.

    .venv/bin/python benchmarks/scaling.py [--sizes 1000,100000,1000000] [--customers 10,100000]

For each size N, N recorded calls are spread over C customers, both as costguard counters (one per
customer and period, written through the store) and as rows of a plain `calls(feature, customer,
month, cost)` table, the "check-then-record" pattern. Then the median latency of `guard.check()`
for one customer is printed next to `SELECT SUM(cost) … WHERE feature=… AND customer=… AND month=…`
on the same SQLite file (and PostgreSQL with COSTGUARD_BENCH_POSTGRES_URL), with and without an
index on the naive table.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from costguard import Ceiling, Guard, Limit, Period, Unit
from costguard.engine import plan_reservation
from costguard.model import make_match

# Per-call reservations, the figures docs/performance.md gives for this script (leased calls:
# hot_row.py and overhead.py --leases); an older checkout has no `leases` option.
PER_CALL = {"leases": False} if "leases" in inspect.signature(Guard).parameters else {}

CEILINGS = [
    Ceiling(make_match({"feature": "chat", "customer": "*"}), (Limit(Period.MONTH, Unit.USD, 10**15),)),
]


def median_us(fn: Callable[[], object], calls: int = 300) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def populate(guard: Guard, engine: sa.Engine, table: str, size: int, customers: int) -> None:
    """`size` calls: counters via forced reservations (one per distinct customer), rows in the naive table."""
    rng = random.Random(7)
    per_customer: dict[str, int] = {}
    rows = []
    for _ in range(size):
        customer = f"c{rng.randrange(customers)}"
        cost = rng.randrange(100, 5000)
        per_customer[customer] = per_customer.get(customer, 0) + cost
        rows.append({"feature": "chat", "customer": customer, "month": "2026-11", "cost": cost})
        if len(rows) >= 50_000:
            with engine.begin() as conn:
                conn.execute(sa.text(f"INSERT INTO {table} VALUES (:feature, :customer, :month, :cost)"), rows)
            rows.clear()
    if rows:
        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (:feature, :customer, :month, :cost)"), rows)
    now = guard.clock()
    for customer, micros in per_customer.items():
        plan = plan_reservation(
            reservation_id=uuid.uuid4().hex,
            ceilings=guard.ceilings,
            overrides={},
            labels={"feature": "chat", "customer": customer},
            amounts={Unit.USD: micros, Unit.CALLS: 1, Unit.TOKENS: 0},
            now=now,
            tz=guard.tz,
            thresholds=guard.thresholds,
            force=True,
        )
        guard.store.reserve(plan, None)


def run(label: str, guard_url: str, naive_url: str, size: int, customers: int) -> None:
    guard = Guard(guard_url, ceilings=CEILINGS, **PER_CALL)
    engine = sa.create_engine(naive_url)
    table = f"calls_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {table} (feature TEXT, customer TEXT, month TEXT, cost BIGINT)"))
    populate(guard, engine, table, size, customers)
    query = sa.text(f"SELECT SUM(cost) FROM {table} WHERE feature = 'chat' AND customer = 'c1' AND month = '2026-11'")

    def naive() -> None:
        with engine.connect() as conn:
            conn.execute(query).scalar()

    def ours() -> None:
        guard.check("chat", estimate_usd=0.001, customer="c1")

    unindexed = median_us(naive, 30 if size >= 1_000_000 else 300)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE INDEX {table}_idx ON {table} (feature, customer, month)"))
    indexed = median_us(naive)
    check = median_us(ours)
    print(f"{label:<9} {size:>9,} {customers:>9,} {check:>12.1f} {indexed:>14.1f} {unindexed:>16.1f}")
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {table}"))
    guard.close()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--customers", default="10,100000")
    args = parser.parse_args()
    pg = os.environ.get("COSTGUARD_BENCH_POSTGRES_URL") or os.environ.get("COSTGUARD_TEST_POSTGRES_URL")
    print(f"{'store':<9} {'calls':>9} {'customers':>9} {'check µs':>12} {'SUM idx µs':>14} {'SUM no-idx µs':>16}")
    for size in (int(s) for s in args.sizes.split(",")):
        for customers in (int(c) for c in args.customers.split(",")):
            tmp = Path(tempfile.mkdtemp(prefix="costguard-scale-"))
            run("sqlite", f"sqlite:///{tmp / 'cg.db'}", f"sqlite:///{tmp / 'cg.db'}", size, customers)
            if pg:
                base = pg.split("?", 1)[0]
                run("postgres", f"{base}?prefix=scale{uuid.uuid4().hex[:6]}_", base, size, customers)


if __name__ == "__main__":
    main()
