"""A worker process for the Redis race: threads calling a `with_kill_switch` function until it is refused."""

from __future__ import annotations

import threading

from costguard import Blocked, Ceiling, Guard, Limit, Period, Priced, Unit
from costguard.model import make_match


def race_guard(url: str, cap_micros: int) -> Guard:
    """One hard monthly USD ceiling on feature `race`; a store error ends a worker (never an unbudgeted call)."""
    return Guard(
        url,
        ceilings=[Ceiling(make_match({"feature": "race"}), (Limit(Period.MONTH, Unit.USD, cap_micros),))],
        on_store_error="closed",
        store_options={"timeout_ms": 30_000},
    )


def run(url: str, cap_micros: int, threads: int, estimate: float, actual: float) -> tuple[int, int]:
    """Call the guarded function from `threads` threads until refused: (calls that ran, refusals not for budget)."""
    guard = race_guard(url, cap_micros)

    @guard.with_kill_switch("race", estimate=estimate)
    def paid_call() -> Priced[str]:
        return Priced("answer", actual)

    ran = [0] * threads
    odd = [0] * threads
    start = threading.Barrier(threads)

    def loop(index: int) -> None:
        start.wait()
        while True:
            try:
                assert paid_call() == "answer"
            except Blocked as blocked:
                if blocked.decision.reason != "budget_exceeded":
                    odd[index] += 1
                return
            ran[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    guard.close()
    return sum(ran), sum(odd)
