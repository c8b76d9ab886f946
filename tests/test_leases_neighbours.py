"""Leased budget near the cap: headroom an idle neighbour holds in a slice comes back to the fleet.

Two guards stand for two processes on one store (each has its own slices, as a process does). The
clock is a fake one both share, so "within two lease periods" is counted in the guards' own time.
"""

from __future__ import annotations

import time

from costguard import BudgetExceeded, Guard
from costguard.engine.leases import HOT_CALLS
from helpers import FakeClock, usd_ceiling

NOW = 1_780_000_000.0
PERIOD_S = 0.2
CAP = usd_ceiling({"feature": "f"}, day=20.0)  # 2 000 calls at $0.01: room to lease far from the cap


def call(guard: Guard) -> bool:
    try:
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.01)
    except BudgetExceeded:
        return False
    return True


def test_a_process_whose_neighbour_holds_an_idle_slice_gets_through_within_two_lease_periods(
    fleet_store_url: str,
) -> None:
    clock = FakeClock(NOW)
    neighbour = Guard(fleet_store_url, ceilings=[CAP], lease_period_ms=PERIOD_S * 1000, clock=clock)
    busy = Guard(fleet_store_url, ceilings=[CAP], lease_period_ms=PERIOD_S * 1000, clock=clock)
    try:
        for _ in range(4 * HOT_CALLS):  # hot: it takes a slice, then goes quiet holding what is left of it
            assert call(neighbour)
        ran = 0
        while call(busy):  # the other process spends everything it can reach
            ran += 1
        # What it could not reach is exactly the neighbour's idle headroom (its slice, renewed ahead of
        # need just before it went quiet): nothing else is in flight.
        leases = neighbour.calls.leases
        assert leases is not None
        (held,) = leases.book.slices()
        idle_calls = round((held.granted[0] - held.used[0]) / 10_000)
        assert idle_calls >= 16
        assert ran == 2000 - 4 * HOT_CALLS - idle_calls

        refused_at = clock()
        through_at = None
        while clock() - refused_at <= 2 * PERIOD_S:
            clock.advance(PERIOD_S / 4)
            time.sleep(PERIOD_S)  # the neighbour's sweeper runs every half period of real time
            if call(busy):
                through_at = clock()
                break
        assert through_at is not None, "the neighbour's idle slice never came back"
        assert through_at - refused_at <= 2 * PERIOD_S
        ran += 1
        while call(busy):
            ran += 1
        assert ran == 2000 - 4 * HOT_CALLS  # to the cap exactly: the idle headroom was all spent
    finally:
        busy.close()
        neighbour.close()
    check = Guard(fleet_store_url, ceilings=[CAP], leases=False, clock=clock)
    (row,) = check.status(feature="f").ceilings
    assert (row.spent, row.reserved) == (20.0, 0.0)
    check.close()
