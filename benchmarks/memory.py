"""Resident memory of the memory store after 100 000 distinct customers, and reclaiming expired periods.

.venv/bin/python benchmarks/memory.py [--customers 100000]
"""

from __future__ import annotations

import argparse
import gc

from costguard import Ceiling, Guard, Limit, Period, Unit
from costguard.model import make_match
from costguard.testing import FakeClock


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    clock = FakeClock("2026-11-10T12:00:00Z")
    ceiling = Ceiling(make_match({"feature": "chat", "customer": "*"}), (Limit(Period.DAY, Unit.USD, 10**12),))
    guard = Guard("memory://", ceilings=[ceiling], clock=clock)
    gc.collect()
    before = rss_mb()
    for index in range(args.customers):
        with guard.reserve("chat", estimate_usd=0.001, customer=f"customer-{index}") as r:
            r.commit(0.001)
    gc.collect()
    filled = rss_mb()
    store = guard.store
    counters = len(store._counters)  # type: ignore[attr-defined]
    print(f"customers: {args.customers:,}  counters: {counters:,}")
    per_customer_kb = (filled - before) * 1024 / args.customers
    print(f"RSS before {before:.1f} MB, after {filled:.1f} MB: {per_customer_kb:.2f} KB per customer")
    clock.advance(4 * 86_400)  # past the day's end and its two-day grace; hourly history keeps 8 days
    removed = store.purge(clock())
    remaining = len(store._counters)  # type: ignore[attr-defined]
    print(f"4 days later purge() removed {removed:,} entries; counters left: {remaining:,}")
    clock.advance(8 * 86_400)
    removed = store.purge(clock())
    print(f"12 days later purge() removed {removed:,} more; counters left: {len(store._counters):,}")  # type: ignore[attr-defined]
    gc.collect()
    print(f"RSS after purging {rss_mb():.1f} MB (the allocator may keep freed pages)")
    guard.close()


if __name__ == "__main__":
    main()
