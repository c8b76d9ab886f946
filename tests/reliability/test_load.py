"""The cap holds exactly under a burst: 8 processes x 32 threads (256 callers on a 2-core machine)
against a $10.00 cap at $0.01 a call, with default settings — on a quiet machine and with a CPU hog
busy on every core. Exactly 1 000 calls run, $10.00 is recorded, and every refusal is the budget's:
a slow store is waited for, never taken for an outage. (A reply that still misses `store_deadline_ms`
while the store answers the others is overload: that call is refused `store_busy`, never admitted
unreserved — at most a third of the attempts, or the burst was shed rather than waited for. Its reserve may
have been applied and holds its room until released, so the burst may fall short by at most that many
calls: they fit once the processes have closed, and the recorded total is exact.)"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import workers

from costguard import BudgetExceeded, Guard

pytestmark = pytest.mark.slow

SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 8
THREADS = 32
ATTEMPTS = 12  # 8 x 32 x 12 = 3 072 attempts for 1 000 calls of room
CAP = 10_000_000  # $10.00 in micro-dollars


@contextmanager
def cpu_hog(on: bool) -> Iterator[None]:
    """One busy process per core for the duration, or nothing."""
    stop = SPAWN.Event()
    hogs = (
        [SPAWN.Process(target=workers.hog, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 2)] if on else []
    )
    for process in hogs:
        process.start()
    try:
        yield
    finally:
        stop.set()
        for process in hogs:
            process.join(10)
            if process.is_alive():
                process.kill()


def burst(url: str, cap: int, attempts: int, hog: bool) -> tuple[int, dict[str, int], list[int]]:
    """8 processes x 32 threads, `attempts` calls each, against `cap`: (calls that ran, refusals by
    reason, per process what was not yet recorded when it closed)."""
    start = SPAWN.Barrier(PROCESSES)
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=workers.burst, args=(url, cap, THREADS, attempts, start, results))
        for _ in range(PROCESSES)
    ]
    with cpu_hog(hog):
        for process in procs:
            process.start()
        outcomes = [results.get(timeout=300) for _ in procs]
        for process in procs:
            process.join(60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    refused: dict[str, int] = {}
    for _, reasons, _ in outcomes:
        for reason, count in reasons.items():
            refused[reason] = refused.get(reason, 0) + count
    return sum(ran for ran, _, _ in outcomes), refused, [unrecorded for _, _, unrecorded in outcomes]


def top_up(url: str, cap: int, busy: int) -> int:
    """Once every process has closed: the calls that still fit, made one by one. A reserve whose reply
    the burst never got (refused `store_busy`: `busy` of them) may have been applied; it held its room
    until its release landed, so the burst may have fallen short by as many calls — never by more, never
    over (one more than `busy` is made at most: `assert_exact` says what was wrong)."""
    guard = Guard(url, ceilings=[workers.race_ceiling(cap)], leases=False)
    made = 0
    try:
        guard.flush(30.0)  # releases a closing process left in its spool are written first
        while True:
            try:
                with guard.reserve("race", estimate_usd=0.01) as reservation:
                    reservation.commit(0.01)
            except BudgetExceeded:
                return made
            made += 1
            if made > busy:
                return made  # more room left than the burst's overload refusals explain
    finally:
        guard.close()


def assert_exact(
    ran: int, late: int, refused: dict[str, int], row: tuple[float, float], unrecorded: list[int], cap_calls: int
) -> None:
    """The cap is full to the cent and nothing is held (`row`: spent, reserved); never a call over it; and
    what ran (in the burst and after it) short of it by at most the overload refusals — each a reserve
    whose reply was lost, released by id once the store answers (its room is free again by the top-up)."""
    busy = refused.get("store_busy", 0)
    detail = (ran, late, refused, row, unrecorded)
    assert row == (cap_calls / 100, 0.0), detail
    assert ran + late <= cap_calls, detail
    assert cap_calls - (ran + late) <= busy and late <= busy, detail
    assert unrecorded == [0] * PROCESSES, detail


def assert_only_the_budget_refused(refused: dict[str, int], attempts: int, ran: int) -> None:
    """Every refusal the budget's, but for overload refusals (`store_busy`: calls whose reply missed the
    deadline while the store answered — a batch of one process's calls at a time, at most a third of
    the attempts, or the burst was shed rather than waited for); never `store_error`: nothing was taken
    for an outage."""
    busy = refused.get("store_busy", 0)
    assert busy <= attempts // 3, refused
    assert refused == {"budget_exceeded": attempts - ran - busy, **({"store_busy": busy} if busy else {})}


@pytest.mark.parametrize("hog", [False, True], ids=["quiet", "cpu-hog"])
def test_8_processes_x_32_threads_admit_exactly_1000_calls(shared_store_url: str, hog: bool) -> None:
    ran, refused, unrecorded = burst(shared_store_url, CAP, ATTEMPTS, hog)
    late = top_up(shared_store_url, CAP, refused.get("store_busy", 0))
    guard = Guard(shared_store_url, ceilings=[workers.race_ceiling(CAP)])
    (row,) = guard.status(feature="race").ceilings
    guard.close()
    assert_exact(ran, late, refused, (row.spent, row.reserved), unrecorded, 1000)
    assert_only_the_budget_refused(refused, PROCESSES * THREADS * ATTEMPTS, ran)  # no store error, ever


LEASED_CAP = 50_000_000  # $50.00: slices while 1 024 calls' worth or more is left, then one by one
LEASED_ATTEMPTS = 30  # 8 x 32 x 30 = 7 680 attempts for 5 000 calls of room


def test_8_processes_x_32_threads_with_leased_slices_admit_exactly_5000_calls(fleet_store_url: str) -> None:
    """The same burst with a cap large enough that every process leases slices of it (Redis,
    PostgreSQL), with a CPU hog on every core: exactly 5 000 calls, $50.00 recorded, every refusal
    the budget's, nothing left reserved once the processes have closed."""
    ran, refused, unrecorded = burst(fleet_store_url, LEASED_CAP, LEASED_ATTEMPTS, True)
    late = top_up(fleet_store_url, LEASED_CAP, refused.get("store_busy", 0))
    guard = Guard(fleet_store_url, ceilings=[workers.race_ceiling(LEASED_CAP)], leases=False)
    try:
        (row,) = guard.status(feature="race").ceilings
        leased, before = 0, None
        while True:  # every reserve line, page by page: how many calls a slice served
            page = guard.audit(feature="race", decision="reserve", limit=1000, before_id=before)
            leased += sum(1 for record in page if record.data.get("leased") or record.data.get("leased_ceilings"))
            if len(page) < 1000:
                break
            before = page[-1].id
    finally:
        guard.close()
    assert_exact(ran, late, refused, (row.spent, row.reserved), unrecorded, 5000)
    assert_only_the_budget_refused(refused, PROCESSES * THREADS * LEASED_ATTEMPTS, ran)
    assert leased >= 1000, leased  # slices served a good part of the burst
