"""A worker process for the alert tests: threads pushing one feature past its limit."""

from __future__ import annotations

import threading

from costguard import Blocked, Guard


def push(config_path: str, threads: int, calls: int, estimate: float, actual: float) -> int:
    """`threads` threads each make `calls` guarded calls of feature `f`; returns how many were allowed."""
    guard = Guard.from_yaml(config_path)
    allowed = [0] * threads
    start = threading.Barrier(threads)

    def loop(index: int) -> None:
        start.wait()
        for _ in range(calls):
            try:
                with guard.reserve("f", estimate_usd=estimate) as reservation:
                    reservation.commit(actual)
            except Blocked:
                continue
            allowed[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    guard.close()  # delivers queued alerts before the process exits
    return sum(allowed)


def push_together(config_path: str, threads: int, estimate: float, actual: float) -> int:
    """Every thread reserves, all wait for each other, then all commit `actual`: in-flight excess lands at once."""
    guard = Guard.from_yaml(config_path)
    barrier = threading.Barrier(threads)
    allowed = [0] * threads

    def one(index: int) -> None:
        try:
            reservation = guard.reserve("f", estimate_usd=estimate)
        except Blocked:
            barrier.wait()
            return
        barrier.wait()
        reservation.commit(actual)
        allowed[index] = 1

    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    guard.close()
    return sum(allowed)
