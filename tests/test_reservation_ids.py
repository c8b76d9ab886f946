"""Reservation ids: unique in a process under threads, and a forked child never repeats its parent's."""

from __future__ import annotations

import os
import threading

import pytest

from costguard import Guard
from helpers import usd_ceiling

CAP = usd_ceiling({"feature": "f"}, day=1000.0)


def reserve_ids(guard: Guard, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        with guard.reserve("f", estimate_usd=0.001) as r:
            ids.append(r.id)
    return ids


def test_ids_are_unique_across_threads() -> None:
    guard = Guard("memory://", ceilings=[CAP])
    out: list[list[str]] = []
    threads = [threading.Thread(target=lambda: out.append(reserve_ids(guard, 500))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [i for chunk in out for i in chunk]
    assert len(ids) == 4000 == len(set(ids))
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    guard.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_its_own_ids() -> None:
    """A server that imports the app and forks its workers: each worker's ids are its own (two workers
    repeating one sequence would make the store take one's reservation for the other's)."""
    guard = Guard("memory://", ceilings=[CAP])
    before = reserve_ids(guard, 3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out
        try:
            os.write(write, " ".join(reserve_ids(guard, 3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = reserve_ids(guard, 3)
    assert len(child) == 3
    assert not set(child) & set(parent)
    assert {i[:20] for i in child} != {i[:20] for i in before + parent}  # a prefix of its own
    guard.close()
