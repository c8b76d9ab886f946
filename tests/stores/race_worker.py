"""A worker process for the multi-process race: 16 threads reserving until the cap says no."""

from __future__ import annotations

import threading

from costguard import BudgetExceeded, Ceiling, Guard, Limit, Period, Unit
from costguard.model import make_match


def race_guard(url: str, cap_micros: int) -> Guard:
    """A guard with one hard monthly USD ceiling on feature `race`."""
    return Guard(
        url,
        ceilings=[Ceiling(make_match({"feature": "race"}), (Limit(Period.MONTH, Unit.USD, cap_micros),))],
        store_options={"timeout_ms": 30_000},
    )


def run(url: str, cap_micros: int, threads: int, estimate: float, actual: float | None) -> int:
    """Reserve-and-commit in `threads` threads until blocked; returns how many calls were allowed."""
    guard = race_guard(url, cap_micros)
    allowed = [0] * threads
    start = threading.Barrier(threads)

    def loop(index: int) -> None:
        start.wait()
        while True:
            try:
                with guard.reserve("race", estimate_usd=estimate) as reservation:
                    if actual is not None:
                        reservation.commit(actual)
            except BudgetExceeded:
                return
            allowed[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    guard.close()
    return sum(allowed)
