"""The issue's race on a real Redis: 4 processes x 16 threads through `with_kill_switch`."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import redis_race_worker

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture
def url(redis_urls: Any) -> str:
    return str(redis_urls.new("redis"))


def race(url: str, cap_micros: int, threads: int, estimate: float, actual: float) -> int:
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(redis_race_worker.run, [(url, cap_micros, threads, estimate, actual)] * 4)
    assert [odd for _, odd in results] == [0] * 4  # every refusal was the budget, none a store error
    return sum(ran for ran, _ in results)


def test_a_10_dollar_cap_admits_exactly_1000_calls_at_a_cent(url: str) -> None:
    assert race(url, 10_000_000, 16, 0.01, 0.01) == 1000
    guard = redis_race_worker.race_guard(url, 10_000_000)
    (row,) = guard.status(feature="race").ceilings
    assert (row.spent, row.reserved, row.limit, row.remaining) == (10.0, 0.0, 10.0, 0.0)
    guard.close()


def test_overshoot_when_calls_cost_more_than_estimated_is_bounded_and_reported(url: str) -> None:
    """Estimate $0.01, actual $0.015: only calls already in flight can push past the cap, by their excess."""
    ran = race(url, 1_000_000, 16, 0.01, 0.015)
    guard = redis_race_worker.race_guard(url, 1_000_000)
    (row,) = guard.status(feature="race").ceilings
    in_flight = 4 * 16
    assert row.spent == round(ran * 0.015, 6)
    assert 1.0 <= row.spent <= 1.0 + in_flight * 0.005 + 0.015
    assert row.ratio == round(row.spent / 1.0, 6)
    assert row.remaining == 0.0
    guard.close()
