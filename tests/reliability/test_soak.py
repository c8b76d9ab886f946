"""Soak: 4 processes x many guarded calls across 1 000 customers — exact totals, no leaks.

CI runs 4 x 1 500 calls per store; `COSTGUARD_SOAK_CALLS=100000` runs the full soak of the
reliability plan (the figures are in docs/performance.md).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter

import pytest
import workers

log = logging.getLogger(__name__)
CALLS = int(os.environ.get("COSTGUARD_SOAK_CALLS", "1500"))
CUSTOMERS = 1000


@pytest.mark.slow
@pytest.mark.parametrize("processes", [4])
def test_soak_exact_totals_and_no_leaks(fleet_store_url: str, processes: int) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        results = pool.starmap(workers.soak, [(fleet_store_url, CALLS, CUSTOMERS, w) for w in range(processes)])
    expected: Counter[str] = Counter()
    for worker, result in enumerate(results):
        expected.update(result["spent"])
        log.info("soak worker %d: %d calls, RSS %s KB, open fds %s", worker, CALLS, result["rss_kb"], result["fds"])
        rss_warm, rss_end = result["rss_kb"]
        fds_warm, fds_end = result["fds"]
        assert rss_end - rss_warm < 20_000, result["rss_kb"]  # < 20 MB growth over 90 % of the calls
        assert fds_end <= fds_warm + 2, result["fds"]  # no connection leak
    guard = workers.guard_for(fleet_store_url, 10**12)
    rows = {c.labels.get("customer"): c for c in guard.status(feature="f").ceilings if "customer" in c.labels}
    feature_total = next(c for c in guard.status(feature="f").ceilings if c.labels == {"feature": "f"})
    guard.close()
    assert len(rows) == CUSTOMERS
    for customer, micros in expected.items():
        assert round(rows[customer].spent * 1_000_000) == micros, customer
        assert rows[customer].reserved == 0
    assert round(feature_total.spent * 1_000_000) == sum(expected.values())
